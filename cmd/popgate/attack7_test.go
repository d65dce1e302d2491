package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAttack7FleetUpgradeKick: a replica of a fleet upgrades (SIGUSR2)
// while alice is logged in; her session stays on the old process, which
// drains, and the new one, with the same node_name, serves the admin
// address. GET /sessions on it lists her session, DELETE
// /sessions?user=alice ends it (an account taken over must not keep its
// session for the whole drain), and the old process's exit leaves the
// new one's sessions listed.
func TestAttack7FleetUpgradeKick(t *testing.T) {
	f := newFleet(t)
	_, addr := mailboxServer(t, messages(1)...)
	exe := filepath.Join(t.TempDir(), "popgate")
	installBinary(t, popgateBinary(t), exe)
	path := writeConfig(t, oneBackend(addr, `shutdown_timeout = "60s"`)+f.section(0))
	p := startPopgateCmd(t, exec.Command(exe, "run", "-config", path), nil, "plain")
	logOnFailure(t, p)
	alice := loginRetry(t, p)
	fleetList(t, p, f.token, 1)

	p.signal(syscall.SIGUSR2)
	pid := p.handedOver()
	// The new process registers too: both are listed, whichever wrote
	// last.
	time.Sleep(6 * time.Second) // a refresh of both
	for range 3 {
		if list := fleetList(t, p, f.token, 1); list[0].User != procUser {
			t.Fatalf("GET /sessions on the new process lists %+v, want alice's session on the old one", list)
		}
		time.Sleep(2 * time.Second)
	}
	// On the new process, a session of alice's still logging in (the
	// backend holds her maildrop for the old one's).
	bob := p.dial("plain")
	bob.cmd("USER " + procUser)
	io.WriteString(bob.c, "PASS wrong\r\n")
	if line := bob.line(); !strings.HasPrefix(line, "-ERR") {
		t.Fatalf("a wrong password answered %q", line)
	}
	fleetList(t, p, f.token, 2)

	resp := p.request(http.MethodDelete, "/sessions?user=alice", "", f.token)
	var ended struct {
		Ended int `json:"ended"`
	}
	if err := json.Unmarshal([]byte(resp.body), &ended); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE /sessions?user=alice = %d %q", resp.StatusCode, resp.body)
	}
	if ended.Ended != 2 {
		t.Errorf("DELETE /sessions?user=alice on the new process answered %s, want both of her sessions ended", resp.body)
	}
	if !closedByProxy(alice) {
		t.Error("alice's session on the old process survived the kick")
	}
	if !closedByProxy(bob) {
		t.Error("alice's session on the new process survived the kick")
	}
	p.waitExited() // once its last session ended
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait() // the new processes too: they hold its log
}
