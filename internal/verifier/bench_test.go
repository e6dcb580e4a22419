package verifier

import (
	"context"
	"fmt"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// BenchmarkVerify reports verifications per second of a cached token (one
// hash and a cache lookup) against an uncached one (a new token each time:
// parse and one ES256 or RS256 signature check), in the same run.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.RS256} {
		k := newKey(b, alg, "k1")
		is := newIssuerServer(b, k)
		v := newTestVerifier(b, nil, Provider{Name: "p", Issuer: is.URL()})
		ctx := context.Background()
		hot := k.sign(b, claimsFor(is.URL()), nil)
		if _, err := v.Verify(ctx, Request{Token: hot}); err != nil {
			b.Fatal(err)
		}
		v.cache.wait()
		b.Run(string(alg)+"/cached", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Verify(ctx, Request{Token: hot, RequiredScopes: []string{"orders/read"}}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
		})
		b.Run(string(alg)+"/uncached", func(b *testing.B) {
			b.StopTimer()
			tokens := make([]string, b.N)
			for i := range tokens {
				tokens[i] = k.sign(b, with(claimsFor(is.URL()), "jti", fmt.Sprint(i)), nil)
			}
			b.ReportAllocs()
			b.StartTimer()
			for i := range b.N {
				if _, err := v.Verify(ctx, Request{Token: tokens[i], RequiredScopes: []string{"orders/read"}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
		})
	}
}
