package pop3test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
)

// SamplePassword is the password of the mailbox [SampleMailbox] returns.
const SamplePassword = "demo-password"

// uniqueID derives a stable RFC 1939 §7 unique-id (printable, at most 70
// octets) from a message's original position and content.
func uniqueID(i int, msg []byte) string {
	sum := sha256.Sum256(msg)
	return fmt.Sprintf("%d-%x", i+1, sum[:6])
}

// crlf joins lines with CRLF and ends the result with CRLF.
func crlf(lines ...string) []byte {
	return []byte(strings.Join(lines, "\r\n") + "\r\n")
}

// SampleMailbox returns a new small demo mailbox with password
// [SamplePassword] and three short messages. The second has body lines
// starting with "." (one is a lone "."), which exercises dot-stuffing.
func SampleMailbox() *Mailbox {
	return &Mailbox{
		Password: SamplePassword,
		Messages: [][]byte{
			crlf(
				"From: popgate <postmaster@popgate.example>",
				"To: demo@popgate.example",
				"Subject: Welcome to popgate",
				"Date: Mon, 03 Mar 2025 09:00:00 +0000",
				"Message-ID: <welcome@popgate.example>",
				"MIME-Version: 1.0",
				"Content-Type: text/plain; charset=utf-8",
				"",
				"Hello!",
				"",
				"This message was fetched from popgate's built-in sample mailbox",
				"through the TLS-terminating proxy. Try TOP, UIDL and DELE; deletions",
				"are applied only when you QUIT.",
			),
			crlf(
				"From: Alice Example <alice@example.org>",
				"To: demo@popgate.example",
				"Subject: Files to keep out of the repository",
				"Date: Mon, 03 Mar 2025 10:15:00 +0000",
				"Message-ID: <dotfiles@example.org>",
				"Content-Type: text/plain; charset=utf-8",
				"",
				"Hi,",
				"",
				"please add these to the ignore list:",
				".env",
				".DS_Store",
				"..and nothing that starts with two dots.",
				".",
				"(The lone dot above is part of the message, not its end.)",
				"",
				"Alice",
			),
			crlf(
				"From: Bob Example <bob@example.net>",
				"To: demo@popgate.example",
				"Subject: Re: lunch?",
				"Date: Tue, 04 Mar 2025 11:30:00 +0100",
				"Message-ID: <lunch-reply@example.net>",
				"In-Reply-To: <lunch@popgate.example>",
				"Content-Type: text/plain; charset=utf-8",
				"",
				"Noon works. See you there.",
			),
		},
	}
}

// GenerateMessage returns a deterministic RFC 5322 message with CRLF line
// endings whose body has many lines starting with "." (including lone "."
// and ".." lines), for byte-identical RETR tests through dot-stuffing. The
// result is exactly size octets long when size exceeds the header (about
// 270 octets) by at least 2; smaller sizes yield the header and a short body.
func GenerateMessage(size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 128)
	b.Write(crlf(
		"From: Generator <generator@pop3test.example>",
		"To: demo@popgate.example",
		fmt.Sprintf("Subject: Generated message of %d octets", size),
		"Date: Mon, 03 Mar 2025 12:00:00 +0000",
		fmt.Sprintf("Message-ID: <generated-%d@pop3test.example>", size),
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
	))
	for i := 0; ; i++ {
		var line string
		switch i % 8 {
		case 3:
			line = fmt.Sprintf(".line %07d starts with a dot", i)
		case 5:
			line = "."
		case 6:
			line = fmt.Sprintf("..line %07d starts with two dots", i)
		default:
			line = fmt.Sprintf("line %07d the quick brown fox jumps over the lazy dog", i)
		}
		r := size - b.Len()
		need := len(line) + 2
		// Stop when the line would not fit, or would leave exactly one
		// octet that no CRLF-terminated filler line can take.
		if need > r || r-need == 1 {
			if r >= 2 {
				b.WriteString(strings.Repeat("x", r-2) + "\r\n")
			} else if i == 0 {
				b.WriteString("x\r\n")
			}
			return b.Bytes()
		}
		b.WriteString(line + "\r\n")
	}
}
