package sds

import "time"

// PreparedEncodes returns how many responses were encoded so far.
func PreparedEncodes() int64 { return preparedEncodes.Load() }

// SetPreparedLinger sets how long an encoded response is shared, until
// the returned function restores it (no test may run in parallel).
func SetPreparedLinger(d time.Duration) (restore func()) {
	old := preparedLinger
	preparedLinger = d
	return func() { preparedLinger = old }
}
