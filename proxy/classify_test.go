package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/popgate/popgate/auth"
)

// TestClassify: every way a login ends, and what it means for the client's
// reply, popgate_logins_total, the log level, the throttle and the failure's
// timing.
func TestClassify(t *testing.T) {
	const delay = 100 * time.Millisecond // failure_delay
	rejected := func(reply string) error { return &backendRejected{backend: "b1", reply: reply} }
	var (
		info = slog.LevelInfo
		warn = slog.LevelWarn
	)
	const (
		failed    = auth.AttemptFailed
		aborted   = auth.AttemptAborted
		succeeded = auth.AttemptSucceeded
	)
	tests := []struct {
		name  string
		err   error
		relay bool // RelayBackendErrors
		want  loginOutcome
	}{
		{"ok", nil, false,
			loginOutcome{result: LoginOK, level: info, attempt: succeeded}},
		{"throttled", &throttledError{time.Minute}, false,
			loginOutcome{result: LoginThrottled, reply: msgThrottled, level: info, attempt: aborted, delay: delay}},
		{"no route", auth.ErrNoRoute, false,
			loginOutcome{result: LoginNoRoute, reply: msgAuthFailed, level: info, attempt: failed, pad: true, delay: delay}},
		{"no route wrapped", fmt.Errorf("map file: %w", auth.ErrNoRoute), false,
			loginOutcome{result: LoginNoRoute, reply: msgAuthFailed, level: info, attempt: failed, pad: true, delay: delay}},
		{"denied", &auth.DeniedError{Reason: "wrong password"}, false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, delay: delay}},
		{"denied with a longer Auth-Wait", &auth.DeniedError{Reason: "x", Wait: 3 * time.Second}, false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, delay: 3 * time.Second}},
		{"denied with a shorter Auth-Wait", &auth.DeniedError{Reason: "x", Wait: time.Millisecond}, false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, delay: delay}},
		{"checked and denied", &auth.DeniedError{Reason: "password does not match", Checked: true}, false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, record: lookupRefusals, delay: delay}},
		{"lookup error", &lookupError{errors.New("auth_http: 500")}, false,
			loginOutcome{result: LoginLookupError, reply: msgTempFail, level: warn, attempt: aborted, delay: delay}},
		{"lookup cut off by the deadline", &lookupError{fmt.Errorf("auth_http: %w", context.DeadlineExceeded)}, false,
			loginOutcome{result: LoginLookupError, reply: msgTempFail, level: warn, attempt: aborted, delay: delay}},
		{"backend refused", rejected("-ERR [AUTH] Authentication failed.\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, record: "b1", delay: delay}},
		{"backend refused, relayed", rejected("-ERR [AUTH] Authentication failed.\r\n"), true,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [AUTH] Authentication failed.\r\n", level: info, attempt: failed, pad: true, record: "b1", delay: delay}},
		{"backend refused without a code", rejected("-ERR No such user here\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, record: "b1", delay: delay}},
		{"backend refused, a code out of place", rejected("-ERR no such user [IN-USE]\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: info, attempt: failed, pad: true, record: "b1", delay: delay}},
		{"backend in use", rejected("-ERR [IN-USE] locked\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [IN-USE] locked\r\n", level: info, attempt: aborted, delay: delay}},
		{"backend in use, lower case", rejected("-ERR [in-use] locked\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [in-use] locked\r\n", level: info, attempt: aborted, delay: delay}},
		{"backend login delay", rejected("-ERR [LOGIN-DELAY] wait 15 minutes\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [LOGIN-DELAY] wait 15 minutes\r\n", level: info, attempt: aborted, delay: delay}},
		{"backend SYS/TEMP", rejected("-ERR [SYS/TEMP] storage unavailable\r\n"), false,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [SYS/TEMP] storage unavailable\r\n", level: info, attempt: aborted, delay: delay}},
		{"backend SYS/PERM, relayed", rejected("-ERR [SYS/PERM] gone\r\n"), true,
			loginOutcome{result: LoginAuthFailed, reply: "-ERR [SYS/PERM] gone\r\n", level: info, attempt: aborted, delay: delay}},
		{"backend unreachable", &dialError{errors.New(`dial backend "b1": connection refused`)}, false,
			loginOutcome{result: LoginBackendError, reply: msgTempFail, level: warn, attempt: aborted, delay: delay}},
		{"backend broke off", fmt.Errorf(`backend "b1" (10.0.0.1:110): greeting: %w`, errors.New("EOF")), false,
			loginOutcome{result: LoginBackendError, reply: msgTempFail, level: warn, attempt: aborted, delay: delay}},
		{"backend cut off by the deadline", fmt.Errorf(`backend "b1" (10.0.0.1:110): PASS: %w`, context.DeadlineExceeded), false,
			loginOutcome{result: LoginBackendError, reply: msgTempFail, level: warn, attempt: aborted, delay: delay}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{FailureDelay: delay, RelayBackendErrors: tc.relay}
			got := classify(tc.err, cfg)
			if got != tc.want {
				t.Errorf("classify(%v) =\n\t%+v, want\n\t%+v", tc.err, got, tc.want)
			}
			// The rule the table must keep: a failure that counts
			// as a guess looks like every other one.
			if got.attempt == auth.AttemptFailed && (!got.pad || !tc.relay && got.reply != msgAuthFailed) {
				t.Errorf("classify(%v) counts a guess but answers %q, pad %v: names could be told apart", tc.err, got.reply, got.pad)
			}
		})
	}
}
