// Package linger shares a value built once among every caller that asks
// for the same thing within a short while, then drops it. The broker's
// edges use it for encoded answers that carry a token (a GetToken
// response, a drop-in endpoint body, a WatchToken event, an SDS
// response): encoding once serves every caller of the key, and since each
// value is dropped TTL after it was built, a token's clear copies live
// about as long as its delivery while the token stays sealed at rest in
// the cache.
package linger

import (
	"sync"
	"time"
)

// Map holds values by key, each for TTL after it was built, at most Max
// of them at once (0: no bound). Its zero value holds nothing for no
// time; set TTL (and Max) before the first Get. Its methods are safe for
// concurrent use.
type Map[K comparable, V any] struct {
	// TTL is how long a value is held after it was built.
	TTL time.Duration
	// Max bounds the keys held at once; past it, values for further keys
	// are built for their caller alone. 0 means no bound.
	Max int

	mu sync.RWMutex
	m  map[K]*held[V]
}

// held is one value of a Map; its address tells a value from the next one
// built for the same key.
type held[V any] struct{ v V }

// Get returns the value held for k when same reports that it stands for
// what the caller needs. Otherwise it builds one with build, holds it for
// TTL (unless Max keys are held already) and returns it. The build runs
// under the map's lock, so that concurrent callers of a key wait for one
// build rather than each build their own. A build error is returned as
// it is, and nothing is held.
func (m *Map[K, V]) Get(k K, same func(V) bool, build func() (V, error)) (V, error) {
	m.mu.RLock()
	h := m.m[k]
	m.mu.RUnlock()
	if h != nil && same(h.v) {
		return h.v, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.m[k]; h != nil && same(h.v) {
		return h.v, nil
	}
	v, err := build()
	if err != nil {
		return v, err
	}
	if _, ok := m.m[k]; !ok && m.Max > 0 && len(m.m) >= m.Max {
		return v, nil
	}
	if m.m == nil {
		m.m = make(map[K]*held[V])
	}
	h = &held[V]{v: v}
	m.m[k] = h
	time.AfterFunc(m.TTL, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.m[k] == h {
			delete(m.m, k)
		}
	})
	return v, nil
}

// Len returns how many keys hold a value.
func (m *Map[K, V]) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.m)
}
