package sds_test

import (
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/testkit"
)

func TestMain(m *testing.M) { testkit.VerifyTestMain(m) }
