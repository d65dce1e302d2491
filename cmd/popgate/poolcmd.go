package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/popgate/popgate/pool"
)

const poolUsage = `Usage:
  popgate pool [-config FILE] list [-users]        the pools, their backends and users
  popgate pool [-config FILE] drain POOL BACKEND   no new users; its users move as their sessions end
  popgate pool [-config FILE] undrain POOL BACKEND
  popgate pool [-config FILE] weight POOL BACKEND N
  popgate pool [-config FILE] add POOL BACKEND [N] a [[backend]] joins the pool (weight N, 1 if not given)
  popgate pool [-config FILE] remove POOL BACKEND  the backend leaves the pool; its users move as their sessions end
  popgate pool [-config FILE] reset POOL [BACKEND] forget the operator's changes (those of BACKEND only)
  popgate pool [-config FILE] move POOL USER [BACKEND]
                                  end USER's sessions (no QUIT) and assign it anew (to BACKEND)
The running popgate is asked through its admin endpoints (metrics.address,
with the token of metrics.token_file); with [cluster] a change holds on every
replica.
`

// cmdPool asks the running popgate's admin endpoints to list or change the
// backend pools.
func cmdPool(args []string, stdout, stderr io.Writer) error {
	fs, path, err := configFlag("pool", args, stderr, func(fs *flag.FlagSet) {
		fs.Usage = func() { fmt.Fprint(fs.Output(), poolUsage) }
	})
	if err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, poolUsage)
		return flag.ErrHelp
	}
	verb, rest := rest[0], rest[1:]
	if verb == "help" {
		fmt.Fprint(stdout, poolUsage)
		return nil
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	api, err := newAdminClient(c)
	if err != nil {
		return err
	}
	switch verb {
	case "list":
		users := len(rest) == 1 && (rest[0] == "-users" || rest[0] == "--users")
		if len(rest) > 1 || len(rest) == 1 && !users {
			return errors.New("pool list: only -users may follow")
		}
		q := ""
		if users {
			q = "?users=1"
		}
		var st []pool.PoolStatus
		if err := api.do(http.MethodGet, "/pools"+q, &st); err != nil {
			return err
		}
		printPools(stdout, st, users)
		return nil
	case "drain", "undrain", "remove", "weight", "add", "reset", "move":
	default:
		return fmt.Errorf("pool: unknown command %q\n\n%s", verb, poolUsage)
	}
	lo, hi := 2, 2
	switch verb {
	case "weight":
		lo, hi = 3, 3
	case "add", "move":
		hi = 3
	case "reset":
		lo = 1
	}
	if len(rest) < lo || len(rest) > hi {
		return fmt.Errorf("pool %s: wrong number of arguments\n\n%s", verb, poolUsage)
	}
	q := url.Values{}
	switch verb {
	case "move":
		q.Set("user", rest[1])
		if len(rest) == 3 {
			q.Set("backend", rest[2])
		}
	default:
		if len(rest) >= 2 {
			q.Set("backend", rest[1])
		}
		if len(rest) == 3 {
			q.Set("weight", rest[2])
		}
	}
	var ans struct {
		Backend string `json:"backend"`
		Ended   int    `json:"ended"`
		Partial string `json:"partial"`
	}
	if err := api.do(http.MethodPost, "/pools/"+url.PathEscape(rest[0])+"/"+verb+"?"+q.Encode(), &ans); err != nil {
		return err
	}
	if verb == "move" {
		fmt.Fprintf(stdout, "%s -> %s (%d sessions ended)\n", rest[1], ans.Backend, ans.Ended)
	} else {
		fmt.Fprintf(stdout, "pool %s: %s done\n", rest[0], verb)
	}
	if ans.Partial != "" {
		fmt.Fprintf(stderr, "popgate: partial: %s\n", ans.Partial)
	}
	return nil
}

func printPools(w io.Writer, st []pool.PoolStatus, users bool) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, p := range st {
		fmt.Fprintf(tw, "pool %s (affinity_ttl %s)\n", p.Name, p.AffinityTTL)
		fmt.Fprintln(tw, "  BACKEND\tWEIGHT\tCONFIGURED\tSTATE\tUSERS\tSESSIONS")
		for _, b := range p.Backends {
			state := []string{}
			if b.Drained {
				state = append(state, "drained")
			}
			if b.Down {
				state = append(state, "down")
			}
			if b.Override.Added {
				state = append(state, "added")
			}
			if len(state) == 0 {
				state = append(state, "up")
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%d\t%d\n", b.Backend, b.Weight, b.Configured, strings.Join(state, ","), b.NUsers, b.Sessions)
		}
		tw.Flush()
		if users {
			for _, b := range p.Backends {
				fmt.Fprintf(tw, "  users of %s:", b.Backend)
				for _, u := range b.Users {
					fmt.Fprintf(tw, " %s", u)
				}
				fmt.Fprintln(tw)
			}
		}
		if p.Partial != "" {
			fmt.Fprintf(tw, "  partial: %s\n", p.Partial)
		}
	}
	tw.Flush()
}

// adminClient calls the running popgate's admin endpoints.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func newAdminClient(c *settings) (*adminClient, error) {
	m := c.Metrics
	if m.Address == "" {
		return nil, errors.New("metrics.address is not set: the running popgate has no admin endpoints to ask")
	}
	a := &adminClient{http: &http.Client{Timeout: 30 * time.Second}}
	if m.TokenFile != "" {
		b, err := os.ReadFile(m.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("metrics.token_file: %w", err)
		}
		a.token = strings.TrimSpace(string(b))
	}
	host, port, err := net.SplitHostPort(m.Address)
	if err != nil {
		return nil, fmt.Errorf("metrics.address: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening on every address: ask on loopback
	}
	scheme := "http"
	if m.TLS {
		// The admin address serves the POP3 listeners' certificate,
		// for tls.default_server_name.
		scheme = "https"
		a.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{ServerName: c.TLS.DefaultServerName}}
	}
	a.base = scheme + "://" + net.JoinHostPort(host, port)
	return a, nil
}

func (a *adminClient) do(method, path string, out any) error {
	req, err := http.NewRequest(method, a.base+path, nil)
	if err != nil {
		return err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("asking the running popgate: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("asking the running popgate: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("the running popgate answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, out)
}
