package shared

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/tokencache"
)

// nopReceiver ignores what it is told.
type nopReceiver struct{}

func (nopReceiver) Adopt(string, *tokencache.Record) {}
func (nopReceiver) ApplyInvalidation([]byte)         {}

// FuzzHandle: whatever arrives on the channel, handle returns an error or
// nil and never panics.
func FuzzHandle(f *testing.F) {
	kr := tokencache.RandomKeyring()
	tier, err := New(configured(Options{Client: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), Keyring: kr}))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = tier.Close() })
	now := time.Now()
	rec := &tokencache.Record{AccessToken: "tok", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour), RefreshAt: now.Add(45 * time.Minute)}
	other, err := New(configured(Options{Client: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), Keyring: kr}))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = other.Close() })
	f.Add(other.message('T', 3, appendKey(nil, "key"), other.seal("key", 3, rec)))
	f.Add(other.message('I', 4, []byte(`{"All":true}`)))
	f.Add([]byte("T"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_ = tier.handle(msg, nopReceiver{})
	})
}
