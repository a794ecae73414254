package udpproxy

import (
	"net/netip"
	"time"

	"github.com/bbal/bbal/backend"
	"github.com/bbal/bbal/timeouts"
	"github.com/bbal/bbal/udpproxy/cache"
)

// The answer cache (-c; package cache): the reader answers a query from
// it when it can, in the buffer the query came in, and sends the answer
// with the rest of its batch's (one sendmmsg); the answers of the
// backends fill it.

// CacheSweepInterval is how often the cache is swept of entries past
// their stale limit and of backends' old epochs.
const CacheSweepInterval = 10 * time.Second

// SetCache has the proxy answer from c, and keep its backends' answers
// in it. Call it before Start.
func (p *Proxy) SetCache(c *cache.Cache) {
	p.cache = c
	p.cacheSweep = make(chan struct{}, 1)
	p.cacheT = p.ts.NewTimeout("udp answer cache sweep", p.cacheTick)
	p.staleLog = timeouts.NewLimiter(p.clock, 5*time.Second)
}

// Cache returns the answer cache, nil for none.
func (p *Proxy) Cache() *cache.Cache { return p.cache }

// CachePartition is be's share of the cache: its ID and its data's
// epoch now.
func CachePartition(be *backend.Backend) cache.Partition {
	return cache.Partition{Backend: uint16(be.ID()), Epoch: be.Epoch()}
}

// cacheKey reads query's key: Hash 0 when there is no cache, or the
// query cannot use it (counted).
func (p *Proxy) cacheKey(query []byte) cache.Key {
	if p.cache == nil {
		return cache.Key{}
	}
	k, ok := p.cache.KeyOf(query)
	if !ok {
		p.cache.Bypass()
	}
	return k
}

// fromCache answers the query at data[:n] from the cache, if it can,
// writing the answer over it: a fresh answer from be's partition, or
// when be cannot take the query (it is stalled, or nil: no backend is
// available) an expired one within the stale limit, from be's or,
// without be, the client's primary's.
func (p *Proxy) fromCache(l *listener, data []byte, n int, k *cache.Key, be *backend.Backend, primary backend.ID,
	from netip.AddrPort, o *origin, now int64) bool {
	if be == nil {
		pb := p.backends.Get(primary)
		return pb != nil && p.serveStale(l, data, n, k, pb, from, o, now)
	}
	if p.tap != nil {
		copy(l.tapQuery[:], data[:n])
	}
	m, r := p.cache.Get(data, k, CachePartition(be), now)
	switch {
	case r == cache.Hit:
		p.sendCached(l, data[:m], l.tapQuery[:n], from, o, now)
		return true
	case r == cache.Expired && be.Load().Stalled():
		return p.serveStale(l, data, n, k, be, from, o, now)
	}
	return false
}

// serveStale answers the query at data[:n] from be's partition of the
// cache, stale if need be, and logs it at most once per 5 s.
func (p *Proxy) serveStale(l *listener, data []byte, n int, k *cache.Key, be *backend.Backend,
	from netip.AddrPort, o *origin, now int64) bool {
	if p.tap != nil {
		copy(l.tapQuery[:], data[:n])
	}
	m := p.cache.GetStale(data, k, CachePartition(be), now)
	if m == 0 {
		return false
	}
	p.sendCached(l, data[:m], l.tapQuery[:n], from, o, now)
	if ok, held := p.staleLog.Allow(); ok {
		be.Logger().Warn().Stringer("remote_ip", from.Addr()).Int64("suppressed", held).
			Msg("backend cannot take queries: answering from the cache, stale if need be")
	}
	return true
}

// sendCached queues resp, an answer from the cache to query, on the
// reader's queue of l's answers, sent at the end of its batch.
func (p *Proxy) sendCached(l *listener, resp, query []byte, to netip.AddrPort, o *origin, now int64) {
	if l.cached.n == batchLen {
		l.cached.flush()
	}
	l.cached.add(resp, to, o)
	if p.tap != nil {
		p.tap.Query(to, l.local(o), query, now)
		p.tap.Response(to, l.local(o), resp, now, true)
	}
}

// keep puts data, be's answer to a query whose key was k, in the cache.
func (p *Proxy) keep(k *cache.Key, be *backend.Backend, data []byte, now int64) {
	if p.cache != nil && k.Hash != 0 {
		p.cache.Put(k, CachePartition(be), data, now)
	}
}

// cacheTick is the sweep's timer: it posts to cacheLoop.
func (p *Proxy) cacheTick() {
	post(p.cacheSweep)
	p.cacheT.Again(CacheSweepInterval)
}

// cacheLoop is the goroutine that sweeps the cache when cacheTick says:
// of entries past their stale limit, and of those of a backend's old
// epoch or of a backend no longer known. A backend that is down keeps
// its entries, for serving stale.
func (p *Proxy) cacheLoop() {
	defer p.resendWG.Done()
	for {
		select {
		case <-p.done:
			return
		case <-p.cacheSweep:
			p.cache.Sweep(p.clock.Now().UnixNano(), func(pt cache.Partition) bool {
				be := p.backends.Get(backend.ID(pt.Backend))
				return be != nil && CachePartition(be) == pt
			})
		}
	}
}
