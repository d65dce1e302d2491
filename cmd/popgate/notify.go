package main

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// sdNotify tells systemd about popgate's state when it runs as a
// Type=notify (or notify-reload) service: "READY=1" once every listener is
// bound, "RELOADING=1" and "READY=1" around a reload, "STOPPING=1" when
// the drain begins (sd_notify(3)). Without NOTIFY_SOCKET it does nothing.
// Errors are returned for the log; they never stop popgate.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1 (Type=notify-reload, systemd 253 and later).
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
