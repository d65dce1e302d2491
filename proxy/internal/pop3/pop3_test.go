package pop3

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 300)
	huge := strings.Repeat("y", 1<<20)
	cases := []struct {
		name  string
		input string
		bufSz int
		max   int
		want  []string // "ERR" stands for ErrLineTooLong
		end   error
	}{
		{"crlf", "USER a\r\nPASS b\r\n", 16, 255, []string{"USER a", "PASS b"}, io.EOF},
		{"bare lf", "NOOP\nQUIT\n", 16, 255, []string{"NOOP", "QUIT"}, io.EOF},
		{"empty line", "\r\n", 16, 255, []string{""}, io.EOF},
		{"exactly max with crlf", strings.Repeat("a", 253) + "\r\n", 16, 255, []string{strings.Repeat("a", 253)}, io.EOF},
		{"one over max", strings.Repeat("a", 254) + "\r\nNOOP\r\n", 16, 255, []string{"ERR", "NOOP"}, io.EOF},
		{"over max, big buffer", long + "\r\nNOOP\r\n", 4096, 255, []string{"ERR", "NOOP"}, io.EOF},
		{"huge line then command", huge + "\r\nQUIT\r\n", 16, 255, []string{"ERR", "QUIT"}, io.EOF},
		{"long but allowed (SASL)", long + "\r\n", 16, 1024, []string{long}, io.EOF},
		{"partial line at EOF", "NOOP", 16, 255, nil, io.EOF},
		{"partial long line at EOF", long, 16, 255, nil, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.input), tc.bufSz)
			var got []string
			var err error
			for {
				var line []byte
				line, err = ReadLine(br, tc.max)
				if err == ErrLineTooLong {
					got = append(got, "ERR")
					continue
				}
				if err != nil {
					break
				}
				got = append(got, string(line))
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || !errors.Is(err, tc.end) {
				t.Errorf("ReadLine(%.20q) = %q, %v; want %q, %v", tc.input, got, err, tc.want, tc.end)
			}
		})
	}
}

// TestReadLineBounded: an endless line costs no more than the limit.
func TestReadLineBounded(t *testing.T) {
	// AllocsPerRun calls the function twice (warm-up and run): two lines.
	line := strings.Repeat("z", 8<<20) + "\r\n"
	r := strings.NewReader(line + line)
	br := bufio.NewReaderSize(r, 512)
	allocs := testing.AllocsPerRun(1, func() {
		if _, err := ReadLine(br, MaxCommandLen); err != ErrLineTooLong {
			t.Fatalf("err = %v", err)
		}
	})
	// One append of at most MaxCommandLen; never a buffer per chunk.
	if allocs > 2 {
		t.Errorf("ReadLine of an 8 MiB line made %v allocations", allocs)
	}
}

func TestParseCommand(t *testing.T) {
	cases := []struct {
		line string
		want Command
		err  bool
	}{
		{"USER alice", Command{"USER", "alice"}, false},
		{"user alice", Command{"USER", "alice"}, false},
		{"pAsS pass with spaces ", Command{"PASS", "pass with spaces "}, false},
		{"CAPA", Command{"CAPA", ""}, false},
		{"AUTH PLAIN AGFsaWNl", Command{"AUTH", "PLAIN AGFsaWNl"}, false},
		{"xclient ADDR=1", Command{"XCLIENT", "ADDR=1"}, false},
		{"", Command{}, true},
		{" USER", Command{}, true},
		{"US3R a", Command{}, true},
		{"\x16\x03\x01", Command{}, true},
		{"ABCDEFGHIJKLMNOPQ", Command{}, true},
	}
	for _, tc := range cases {
		got, err := ParseCommand([]byte(tc.line))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseCommand(%q) = %+v, %v; want %+v, err=%v", tc.line, got, err, tc.want, tc.err)
		}
	}
}

func TestIsOKErr(t *testing.T) {
	for _, tc := range []struct {
		line    string
		ok, bad bool
	}{{"+OK", true, false}, {"+OK done", true, false}, {"+OKAY", false, false}, {"-ERR", false, true}, {"-ERR [AUTH] no", false, true}, {"-ERROR", false, false}, {"", false, false}} {
		if IsOK([]byte(tc.line)) != tc.ok || IsErr([]byte(tc.line)) != tc.bad {
			t.Errorf("IsOK/IsErr(%q) = %v/%v, want %v/%v", tc.line, IsOK([]byte(tc.line)), IsErr([]byte(tc.line)), tc.ok, tc.bad)
		}
	}
}

func TestParseCapa(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("TOP\r\nuser\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"))
	caps, err := ParseCapa(br, 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := caps["USER"]; !ok || caps["SASL"] != "PLAIN LOGIN" || len(caps) != 4 {
		t.Errorf("ParseCapa = %v", caps)
	}
	br = bufio.NewReader(strings.NewReader(strings.Repeat("X\r\n", 200) + ".\r\n"))
	if _, err := ParseCapa(br, 100); err == nil {
		t.Error("ParseCapa accepted 200 lines with a limit of 100")
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"USER alice", "PASS x y", "AUTH PLAIN =", "CAPA", "STLS", "", "\x00", "QUIT\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := ParseCommand(line)
		if err != nil {
			return
		}
		if cmd.Name == "" || len(cmd.Name) > 16 || strings.ToUpper(cmd.Name) != cmd.Name {
			t.Fatalf("ParseCommand(%q) name %q", line, cmd.Name)
		}
		if len(cmd.Arg) >= len(line) {
			t.Fatalf("ParseCommand(%q) arg longer than the line", line)
		}
	})
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("USER a\r\nPASS b\r\n"), 16)
	f.Add([]byte(strings.Repeat("a", 300)+"\n"), 32)
	f.Fuzz(func(t *testing.T, in []byte, bufSz int) {
		bufSz = 16 + (bufSz&0xffff)%4096
		br := bufio.NewReaderSize(strings.NewReader(string(in)), bufSz)
		for range len(in) + 1 {
			line, err := ReadLine(br, MaxCommandLen)
			if err == ErrLineTooLong {
				continue
			}
			if err != nil {
				return
			}
			if len(line) > MaxCommandLen {
				t.Fatalf("line of %d octets passed the %d limit", len(line), MaxCommandLen)
			}
		}
	})
}

func BenchmarkParseCommand(b *testing.B) {
	line := []byte("user alice@example.com")
	b.ReportAllocs()
	for range b.N {
		if _, err := ParseCommand(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadLine(b *testing.B) {
	input := strings.Repeat("USER alice@example.com\r\n", 1000)
	r := strings.NewReader(input)
	br := bufio.NewReaderSize(r, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len("USER alice@example.com\r\n")))
	for i := range b.N {
		if i%1000 == 0 {
			r.Reset(input)
			br.Reset(r)
		}
		if _, err := ReadLine(br, MaxCommandLen); err != nil {
			b.Fatal(err)
		}
	}
}

func TestResponseCode(t *testing.T) {
	tests := []struct{ line, want string }{
		{"-ERR [IN-USE] locked", CodeInUse},
		{"-ERR [in-use] locked", CodeInUse},
		{"-ERR [SYS/TEMP] try later", CodeSysTemp},
		{"-ERR [LOGIN-DELAY] wait", CodeLoginDelay},
		{"+OK [XYZ] fine", "[XYZ]"},
		{"-ERR no such user [SYS/TEMP]", ""},
		{"-ERR [AUTH", ""},
		{"-ERR []", ""},
		{"-ERR [a b] x", ""},
		{"-ERR", ""},
		{"-ERR[IN-USE]", ""},
		{"garbage [IN-USE]", ""},
	}
	for _, tc := range tests {
		if got := ResponseCode(tc.line); got != tc.want {
			t.Errorf("ResponseCode(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestIsSys(t *testing.T) {
	tests := []struct {
		code string
		want bool
	}{
		{CodeSysTemp, true},
		{CodeSysPerm, true},
		{"[SYS/TEMP/QUOTA]", true},
		{"[SYS]", false}, // no level below SYS: not one of RFC 3206's
		{CodeAuth, false},
		{CodeInUse, false},
		{CodeLoginDelay, false},
		{"", false},
	}
	for _, tc := range tests {
		if got := IsSys(tc.code); got != tc.want {
			t.Errorf("IsSys(%q) = %v, want %v", tc.code, got, tc.want)
		}
	}
}
