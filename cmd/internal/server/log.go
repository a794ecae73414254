package server

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// loggerName is the bunyan "name" of every record, the original's.
const loggerName = "mname-balancer"

// bunyanLevels maps zerolog levels to bunyan's numeric levels.
var bunyanLevels = map[zerolog.Level]int{
	zerolog.TraceLevel: 10,
	zerolog.DebugLevel: 20,
	zerolog.InfoLevel:  30,
	zerolog.WarnLevel:  40,
	zerolog.ErrorLevel: 50,
	zerolog.FatalLevel: 60,
	zerolog.PanicLevel: 60,
}

// ParseLevel accepts bunyan's level names and numbers.
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "trace", "10":
		return zerolog.TraceLevel, nil
	case "debug", "20":
		return zerolog.DebugLevel, nil
	case "info", "30":
		return zerolog.InfoLevel, nil
	case "warn", "40":
		return zerolog.WarnLevel, nil
	case "error", "50":
		return zerolog.ErrorLevel, nil
	case "fatal", "60":
		return zerolog.FatalLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("invalid log level %q (want trace, debug, info, warn, error or fatal)", s)
}

// bunyanHook adds the fields bunyan derives per record: the numeric level
// and the time (UTC, milliseconds, "Z").
type bunyanHook struct{ now func() time.Time }

func (h bunyanHook) Run(e *zerolog.Event, l zerolog.Level, _ string) {
	var b [24]byte
	e.Int("level", bunyanLevels[l]).
		Bytes("time", h.now().UTC().AppendFormat(b[:0], "2006-01-02T15:04:05.000Z"))
}

func init() {
	// The field names are zerolog's only global configuration; bunyan's
	// level and time are added by bunyanHook instead.
	zerolog.LevelFieldName = ""
	zerolog.TimestampFieldName = ""
	zerolog.MessageFieldName = "msg"
	zerolog.ErrorFieldName = "err"
	zerolog.DurationFieldUnit = time.Millisecond
}

// NewLogger returns the root logger: bunyan JSON records, one per line,
// with the core fields v, level, name, hostname, pid, time and msg.
func NewLogger(w io.Writer, level zerolog.Level, now func() time.Time) zerolog.Logger {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return zerolog.New(w).Level(level).Hook(bunyanHook{now: now}).With().
		Int("v", 0).
		Str("name", loggerName).
		Str("hostname", host).
		Int("pid", os.Getpid()).
		Logger()
}
