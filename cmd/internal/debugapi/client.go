package debugapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Errors of a Client, wrapped with the socket path; test with errors.Is.
var (
	// ErrNotRunning: no bbal answers on the socket.
	ErrNotRunning = errors.New("bbal is not running")
	// ErrPermission: the socket may not be used by this user.
	ErrPermission = errors.New("permission denied")
	// ErrNotSocket: the path is something else, a directory or a file.
	ErrNotSocket = errors.New("not a socket")
)

// APIError is an error reply from the server.
type APIError struct {
	Status  int
	Message string
	body    []byte // the reply's first 4 KiB
}

func (e *APIError) Error() string { return e.Message }

// Client talks to a bbal's debug socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the debug socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext:           func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx, path) },
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConns:          1,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr}}
}

// dialPatience is how long dial tries again while the socket's listen
// backlog is full: bbal accepts at once whatever its load, so a full
// backlog is a burst of connections that is soon taken in.
const dialPatience = 10 * time.Second

// dial connects to the socket at path, trying again, with a growing
// pause, while its listen backlog is full (EAGAIN).
func dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, dialPatience)
	defer cancel()
	pause := time.Millisecond
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if !errors.Is(err, syscall.EAGAIN) {
			return c, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("the listen backlog of %s stayed full: %w", path, err)
		case <-t.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// Close releases the client's idle connection.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := "http://bbal" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			if what := notSocket(c.path); what != "" {
				return nil, fmt.Errorf("%s is %s, %w", c.path, what, ErrNotSocket)
			}
			return nil, fmt.Errorf("%w at %s", ErrNotRunning, c.path)
		case errors.Is(err, syscall.ENOTDIR):
			return nil, fmt.Errorf("%s: a part of the path is not a directory", c.path)
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("%w on %s", ErrPermission, c.path)
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e ErrorReply
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return nil, &APIError{Status: resp.StatusCode, Message: e.Error, body: body}
	}
	return resp, nil
}

// notSocket says what path is when it exists and is not a socket (the
// target of a symbolic link): "a directory", "a regular file", ...; ""
// otherwise.
func notSocket(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	switch m := fi.Mode(); {
	case m&fs.ModeSocket != 0:
		return ""
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	default:
		return "a file of mode " + m.String()
	}
}

func (c *Client) getJSON(ctx context.Context, method, path string, out any) error {
	resp, err := c.do(ctx, method, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad reply: %w", method, path, err)
	}
	return nil
}

// Backends returns every backend.
func (c *Client) Backends(ctx context.Context) (BackendsReply, error) {
	var out BackendsReply
	return out, c.getJSON(ctx, "GET", "/v1/backends", &out)
}

// Stats returns the process-wide counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var out Stats
	return out, c.getJSON(ctx, "GET", "/v1/stats", &out)
}

// Timeouts returns the scheduled timers.
func (c *Client) Timeouts(ctx context.Context) (TimeoutsReply, error) {
	var out TimeoutsReply
	return out, c.getJSON(ctx, "GET", "/v1/timeouts", &out)
}

// Action applies "enable", "disable" or "drain" to backend id and returns
// the backend as it is after.
func (c *Client) Action(ctx context.Context, id uint16, action string) (Backend, error) {
	var out Backend
	return out, c.getJSON(ctx, "POST", fmt.Sprintf("/v1/backends/%d/%s", id, url.PathEscape(action)), &out)
}

// Weight sets backend id's weight (a number, 1 to 1000).
func (c *Client) Weight(ctx context.Context, id uint16, weight string) (Backend, error) {
	var out Backend
	return out, c.getJSON(ctx, "POST", fmt.Sprintf("/v1/backends/%d/weight?value=%s", id, url.QueryEscape(weight)), &out)
}

// ResetCounters sets every counter back to zero.
func (c *Client) ResetCounters(ctx context.Context) error {
	var out struct{}
	return c.getJSON(ctx, "POST", "/v1/counters/reset", &out)
}

// RemoteFilter selects remotes: those of a backend (as primary or
// backup), or one address. Zero values select everything.
type RemoteFilter struct {
	Backend uint16
	IP      string
	Limited bool // only the remotes over their rate limit
}

// Remotes streams the remotes table to fn, in address order, with the
// server's time of the reply, which it also returns. It stops at fn's
// first error, returning it.
func (c *Client) Remotes(ctx context.Context, f RemoteFilter, fn func(now time.Time, r Remote) error) (time.Time, error) {
	q := url.Values{}
	if f.Backend != 0 {
		q.Set("backend", fmt.Sprint(f.Backend))
	}
	if f.IP != "" {
		q.Set("ip", f.IP)
	}
	if f.Limited {
		q.Set("limited", "1")
	}
	resp, err := c.do(ctx, "GET", "/v1/remotes", q)
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	var now time.Time
	dec := json.NewDecoder(resp.Body)
	bad := func(err error) error { return fmt.Errorf("GET /v1/remotes: bad reply: %w", err) }
	if _, err := dec.Token(); err != nil { // {
		return now, bad(err)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return now, bad(err)
		}
		switch key {
		case "now":
			if err := dec.Decode(&now); err != nil {
				return now, bad(err)
			}
		case "remotes":
			if _, err := dec.Token(); err != nil { // [
				return now, bad(err)
			}
			for dec.More() {
				var r Remote
				if err := dec.Decode(&r); err != nil {
					return now, bad(err)
				}
				if err := fn(now, r); err != nil {
					return now, err
				}
			}
			if _, err := dec.Token(); err != nil { // ]
				return now, bad(err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return now, bad(err)
			}
		}
	}
	return now, nil
}

// Ready asks GET /readyz with min (0: the server's default of 1) and
// returns its answer, ready or not; an error only when there is none.
func (c *Client) Ready(ctx context.Context, min int) (Health, error) {
	q := url.Values{}
	if min > 0 {
		q.Set("min", strconv.Itoa(min))
	}
	resp, err := c.do(ctx, "GET", "/readyz", q)
	var h Health
	if err != nil {
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.body == nil {
			return h, err
		}
		if json.Unmarshal(ae.body, &h) != nil || h.Status == "" {
			return h, err
		}
		return h, nil
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return h, fmt.Errorf("GET /readyz: bad reply: %w", err)
	}
	return h, nil
}

// Raw sends method path (with its query) and returns the status and
// body, whatever the status: for scripts and tests.
func (c *Client) Raw(ctx context.Context, method, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://bbal"+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, body, err
}

// Top returns the busiest clients and questions.
func (c *Client) Top(ctx context.Context) (TopReply, error) {
	var out TopReply
	return out, c.getJSON(ctx, "GET", "/v1/top", &out)
}

// Cache returns the answer cache's figures.
func (c *Client) Cache(ctx context.Context) (CacheReply, error) {
	var out CacheReply
	return out, c.getJSON(ctx, "GET", "/v1/cache", &out)
}

// FlushCache flushes the answer cache, or only name's entries when name
// is not "".
func (c *Client) FlushCache(ctx context.Context, name string) (FlushReply, error) {
	var out FlushReply
	path := "/v1/cache/flush"
	if name != "" {
		path += "?name=" + url.QueryEscape(name)
	}
	return out, c.getJSON(ctx, "POST", path, &out)
}
