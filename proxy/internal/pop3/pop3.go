// Package pop3 is the POP3 wire code shared by popgate's client-facing
// session and its backend client: a bounded line reader, the command
// parser, and the response codes of RFC 2449 and RFC 3206.
package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
)

// Limits from the RFCs.
const (
	// MaxCommandLen is the longest command line a client may send,
	// CRLF included (RFC 2449 §4).
	MaxCommandLen = 255
	// MaxResponseLen is the longest first line of a response, CRLF
	// included (RFC 2449 §4). Backends are held to twice that, so that a
	// slightly sloppy server still works while a broken one cannot make
	// popgate buffer without bound.
	MaxResponseLen = 512
)

// RFC 2449 §8 and RFC 3206 response codes, as [ResponseCode] returns them.
const (
	// CodeAuth: the credentials were refused (RFC 3206 §5).
	CodeAuth = "[AUTH]"
	// CodeSysTemp: the server's own trouble, which may pass (RFC 3206 §4).
	CodeSysTemp = "[SYS/TEMP]"
	// CodeSysPerm: the server's own trouble, which will not pass (RFC
	// 3206 §4).
	CodeSysPerm = "[SYS/PERM]"
	// CodeInUse: the mailbox is locked by another session (RFC 2449 §8.1).
	CodeInUse = "[IN-USE]"
	// CodeLoginDelay: the user logged in too recently (RFC 2449 §8.1).
	CodeLoginDelay = "[LOGIN-DELAY]"
)

// IsSys reports whether code, as [ResponseCode] returns it, is of the SYS
// class (RFC 3206 §4): [SYS/TEMP], [SYS/PERM], or a code below either in
// the hierarchy of RFC 2449 §8. Such a code blames the server, not the user.
func IsSys(code string) bool {
	return strings.HasPrefix(code, "[SYS/")
}

// ResponseCode returns the response code of a "-ERR" or "+OK" line, such
// as "[SYS/TEMP]", upper-cased, or "" when the line has none. A code is
// recognised only where RFC 2449 §8 puts it, right after the status
// indicator and one space: "-ERR [IN-USE] locked" has one, "-ERR no such
// user [IN-USE]" does not.
func ResponseCode(line string) string {
	var rest string
	switch {
	case strings.HasPrefix(line, "-ERR "):
		rest = line[len("-ERR "):]
	case strings.HasPrefix(line, "+OK "):
		rest = line[len("+OK "):]
	default:
		return ""
	}
	if !strings.HasPrefix(rest, "[") {
		return ""
	}
	end := strings.IndexByte(rest, ']')
	if end < 2 {
		return ""
	}
	// resp-level = 1*(ALPHA / DIGIT / "-"), levels separated by "/".
	for _, c := range rest[1:end] {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '/') {
			return ""
		}
	}
	return strings.ToUpper(rest[:end+1])
}

// ErrLineTooLong is returned by [ReadLine] for a line longer than the limit.
// The rest of the line has been discarded; the reader is positioned at the
// start of the next line.
var ErrLineTooLong = errors.New("pop3: line too long")

// ReadLine reads one line of at most max octets, the line terminator
// included, and returns it without the terminator. CRLF and a bare LF both
// end a line (lenient in what it accepts, RFC 1939 wants CRLF). A longer
// line is consumed up to its end and reported as [ErrLineTooLong]; memory
// use is bounded by the reader's buffer plus max, however long the line.
// The returned slice is valid until the next read from br.
func ReadLine(br *bufio.Reader, max int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == nil {
		if len(line) > max {
			return nil, ErrLineTooLong
		}
		return trimEOL(line), nil
	}
	if err != bufio.ErrBufferFull {
		// EOF or a network error, perhaps after a partial line: a
		// command without its CRLF is not a command.
		return nil, err
	}
	// The line is longer than the reader's buffer. Collect up to max
	// octets, then skip to the end of the line.
	var acc []byte
	tooLong := false
	for {
		if !tooLong {
			if len(acc)+len(line) > max {
				tooLong = true
				acc = nil
			} else {
				acc = append(acc, line...)
			}
		}
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
		line, err = br.ReadSlice('\n')
	}
	if tooLong {
		return nil, ErrLineTooLong
	}
	return trimEOL(acc), nil
}

func trimEOL(b []byte) []byte {
	b = b[:len(b)-1]
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// Command is a parsed command line.
type Command struct {
	// Name is the keyword, upper-cased (commands are case-insensitive,
	// RFC 1939 §3).
	Name string
	// Arg is everything after the first space, unchanged. PASS keeps
	// spaces as part of the password (RFC 1939 §7).
	Arg string
}

// ErrBadCommand reports a line that is not a POP3 command at all.
var ErrBadCommand = errors.New("pop3: malformed command")

// ParseCommand parses a command line (without its CRLF). The keyword must be
// 1 to 16 ASCII letters; RFC 1939 keywords are 3 or 4, extensions are
// longer.
func ParseCommand(line []byte) (Command, error) {
	name, arg, _ := bytes.Cut(line, []byte{' '})
	if len(name) == 0 || len(name) > 16 {
		return Command{}, ErrBadCommand
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return Command{}, ErrBadCommand
		}
	}
	return Command{Name: upperKeyword(name), Arg: string(arg)}, nil
}

// upperKeyword returns the upper-case keyword, without allocating for the
// commands popgate knows.
func upperKeyword(b []byte) string {
	var buf [16]byte
	n := copy(buf[:], b)
	for i := range n {
		if 'a' <= buf[i] && buf[i] <= 'z' {
			buf[i] -= 'a' - 'A'
		}
	}
	switch s := buf[:n]; string(s) {
	case "USER":
		return "USER"
	case "PASS":
		return "PASS"
	case "AUTH":
		return "AUTH"
	case "CAPA":
		return "CAPA"
	case "STLS":
		return "STLS"
	case "QUIT":
		return "QUIT"
	case "NOOP":
		return "NOOP"
	default:
		return string(s)
	}
}

// IsOK reports whether a response line is positive.
func IsOK(line []byte) bool {
	return bytes.HasPrefix(line, []byte("+OK")) && (len(line) == 3 || line[3] == ' ' || line[3] == '\r' || line[3] == '\n')
}

// IsErr reports whether a response line is negative.
func IsErr(line []byte) bool {
	return bytes.HasPrefix(line, []byte("-ERR")) && (len(line) == 4 || line[4] == ' ' || line[4] == '\r' || line[4] == '\n')
}

// ParseCapa reads the lines of a CAPA response (after its +OK line) up to
// the terminating ".", and returns the capability keywords, upper-cased,
// each mapped to its arguments. At most maxLines lines are accepted.
func ParseCapa(br *bufio.Reader, maxLines int) (map[string]string, error) {
	caps := make(map[string]string)
	for i := 0; ; i++ {
		if i > maxLines {
			return nil, errors.New("pop3: CAPA response too long")
		}
		line, err := ReadLine(br, 2*MaxResponseLen)
		if err != nil {
			return nil, err
		}
		if len(line) == 1 && line[0] == '.' {
			return caps, nil
		}
		name, arg, _ := strings.Cut(string(line), " ")
		caps[strings.ToUpper(name)] = arg
	}
}
