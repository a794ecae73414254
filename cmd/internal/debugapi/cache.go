package debugapi

import (
	"net/http"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/udpproxy/cache"
)

// CacheReply is GET /v1/cache: the answer cache's figures (-c).
type CacheReply struct {
	Now     time.Time `json:"now"`
	Enabled bool      `json:"enabled"`
	cache.Stats
	// HitRatio is hits over the queries looked up (hits and misses);
	// 0 before any.
	HitRatio float64 `json:"hit_ratio"`
}

// FlushReply is POST /v1/cache/flush: how many entries went, and of
// which name ("" for all).
type FlushReply struct {
	Flushed int    `json:"flushed"`
	Name    string `json:"name,omitempty"`
}

func (a *api) cacheStats(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	c := a.src.UDP.Cache()
	out := CacheReply{Now: a.now(), Enabled: c != nil, Stats: c.Stats()}
	if n := out.Hits + out.Misses; n > 0 {
		out.HitRatio = float64(out.Hits) / float64(n)
	}
	a.reply(w, out)
}

// cacheFlush flushes the cache, or with ?name= one name's entries (any
// type, every backend's), and logs who asked.
func (a *api) cacheFlush(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r, "name") {
		return
	}
	c := a.src.UDP.Cache()
	if c == nil {
		fail(w, http.StatusConflict, "no answer cache: bbal runs without -c")
		return
	}
	var out FlushReply
	if name, ok := r.URL.Query()["name"]; ok {
		fqdn := dns.Fqdn(name[0])
		if _, ok := dns.IsDomainName(fqdn); !ok || len(name) > 1 || name[0] == "" {
			fail(w, http.StatusBadRequest, "invalid name %q (want one domain name, such as example.com)", name[0])
			return
		}
		var wire [256]byte
		n, err := dns.PackDomainName(fqdn, wire[:], 0, nil, false)
		if err != nil {
			fail(w, http.StatusBadRequest, "invalid name %q: %v", name[0], err)
			return
		}
		out.Name = dns.CanonicalName(fqdn)
		out.Flushed = c.FlushName(wire[:n])
	} else {
		out.Flushed = c.Flush()
	}
	peer, _ := PeerOf(r.Context())
	e := a.src.Log.Info().Int("uid", peer.UID).Int("pid", peer.PID).Int("flushed", out.Flushed)
	if out.Name != "" {
		e = e.Str("name", out.Name)
	}
	e.Msg("answer cache flushed by operator")
	a.reply(w, out)
}
