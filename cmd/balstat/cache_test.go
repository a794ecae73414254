package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/cmd/internal/debugapi"
	"github.com/bbal/bbal/cmd/internal/server"
	"github.com/bbal/bbal/cmd/internal/servertest"
	"github.com/bbal/bbal/tools/testbed"
	"github.com/bbal/bbal/udpproxy/cache"
)

func TestCacheCommand(t *testing.T) {
	h := servertest.NewConfig(t, func(cfg *server.Config) {
		cfg.Cache = &cache.Config{Entries: 1000, MaxTTL: cache.DefaultMaxTTL, Stale: cache.DefaultStale}
	}, nil)
	testbed.StartMname(t, h.Sock("5301"), "n1")
	h.B.Backends.Scan()
	h.Established(0, 5301)
	for range 2 {
		for _, name := range []string{"a.cache.test", "b.cache.test"} {
			if _, _, err := testbed.Query(h.Addr, testbed.Loopback(1), false, name, dns.TypeTXT); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, errs, code := balstat(t, h, "cache")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"entries        2 of 1000\n", "hit ratio      0.500  (2 hits, 2 misses)\n", "stale answers  0      (serve-stale limit 86400 s)\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("balstat cache lacks %q:\n%s", want, out)
		}
	}
	out, _, code = balstat(t, h, "-j", "cache")
	var r debugapi.CacheReply
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || !r.Enabled || r.Hits != 2 || r.HitRatio != 0.5 {
		t.Fatalf("balstat -j cache: %+v, %v, exit %d", r, err, code)
	}
	if out, _, code := balstat(t, h, "cache", "flush", "A.Cache.Test"); code != 0 || out != "flushed 1 answers for a.cache.test.\n" {
		t.Fatalf("cache flush NAME: %q, exit %d", out, code)
	}
	if out, _, code := balstat(t, h, "cache", "flush"); code != 0 || out != "flushed 1 answers\n" {
		t.Fatalf("cache flush: %q, exit %d", out, code)
	}
	for _, args := range [][]string{{"cache", "show"}, {"cache", "flush", "a", "b"}} {
		if _, errs, code := balstat(t, h, args...); code != 2 || !strings.Contains(errs, "cache takes nothing, or flush and at most a name") {
			t.Errorf("balstat %v: exit %d, %q", args, code, errs)
		}
	}
	if _, errs, code := balstat(t, h, "cache", "flush", "bad..name"); code != 1 || !strings.Contains(errs, `invalid name "bad..name"`) {
		t.Errorf("flush of a bad name: exit %d, %q", code, errs)
	}
}
