// Package config reads an agent's settings from flags and environment
// variables. Every setting has an environment variable (the name shared by
// all StreamSpace agents, e.g. AGENT_ID) and a --kebab-case flag (the Rust
// agent's flag name, e.g. --agent-id); a flag given on the command line wins.
// Errors name the variable and the flag.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is everything the agent needs to run.
type Config struct {
	ControlPlaneURL string // https://HOST:PORT of the agent listener
	AgentID         string
	TLSCert         string // client certificate (PEM file)
	TLSKey          string // its private key (PEM file)
	CACert          string // CA of the control plane's server certificate (PEM file)
	TLSServerName   string // name to verify instead of the URL's host ("" = the host)
	DataDir         string
	Platform        string // always "process"
	Region          string
	MaxSessions     uint32 // 0 = no limit
	MaxCPU          uint64 // cores
	MaxMemoryGB     uint64
	SessionPorts    PortRange
	PortLockDir     string // host-wide port locks shared with other agents ("" = <temp dir>/streamspace-ports)
	StopGrace       time.Duration
	BackoffBase     time.Duration
	BackoffMax      time.Duration
	LogFormat       string // "text" or "json"
}

// PortRange is an inclusive range of TCP ports, LOW-HIGH.
type PortRange struct{ Low, High uint16 }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Low, r.High) }

// Len is the number of ports in the range.
func (r PortRange) Len() int { return int(r.High) - int(r.Low) + 1 }

// ParsePortRange parses "LOW-HIGH" with 1024 <= LOW <= HIGH <= 65535.
func ParsePortRange(s string) (PortRange, error) {
	bad := fmt.Errorf("expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, found %q", s)
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return PortRange{}, bad
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || l < 1024 || l > h {
		return PortRange{}, bad
	}
	return PortRange{Low: uint16(l), High: uint16(h)}, nil
}

// setting is one flag with its environment variable and default.
type setting struct {
	env, flag, def, help string
	val                  *string
}

// Load parses args (without the program name) over the environment that
// getenv reads. Usage text goes to usage (nil: discarded).
func Load(args []string, getenv func(string) string, usage io.Writer) (*Config, error) {
	settings := []*setting{
		{env: "CONTROL_PLANE_URL", flag: "control-plane-url", help: "https://HOST:PORT of the control plane's agent listener (required)"},
		{env: "AGENT_ID", flag: "agent-id", help: "agent id; must match the client certificate's SAN URI (required)"},
		{env: "AGENT_TLS_CERT", flag: "tls-cert", help: "client certificate, PEM (required)"},
		{env: "AGENT_TLS_KEY", flag: "tls-key", help: "client certificate's private key, PEM (required)"},
		{env: "AGENT_CA_CERT", flag: "ca-cert", help: "CA of the control plane's server certificate, PEM (required)"},
		{env: "AGENT_TLS_SERVER_NAME", flag: "tls-server-name", help: "server name to verify, if not the URL's host"},
		{env: "AGENT_DATA_DIR", flag: "data-dir", def: "/var/lib/streamspace-agent", help: "state directory (sessions/, logs/, homes/)"},
		{env: "PLATFORM", flag: "platform", def: "process", help: "runtime; only \"process\" is supported"},
		{env: "REGION", flag: "region", help: "free-text region for placement"},
		{env: "MAX_SESSIONS", flag: "max-sessions", def: "100", help: "most sessions at once (0 = no limit)"},
		{env: "MAX_CPU", flag: "max-cpu", def: "100", help: "CPU cores declared in Hello.capacity"},
		{env: "MAX_MEMORY", flag: "max-memory", def: "128", help: "memory in GiB declared in Hello.capacity"},
		{env: "SESSION_PORTS", flag: "session-ports", def: "20000-29999", help: "LOW-HIGH port range for session processes"},
		{env: "PORT_LOCK_DIR", flag: "port-lock-dir", def: "", help: "directory of host-wide port locks shared by the agents on this host (default <temp dir>/streamspace-ports)"},
		{env: "STOP_GRACE_SECONDS", flag: "stop-grace-seconds", def: "10", help: "seconds between SIGTERM and SIGKILL on stop"},
		{env: "BACKOFF_BASE_MS", flag: "backoff-base-ms", def: "250", help: "first reconnect delay ceiling, ms"},
		{env: "BACKOFF_MAX_MS", flag: "backoff-max-ms", def: "30000", help: "largest reconnect delay, ms"},
		{env: "LOG_FORMAT", flag: "log-format", def: "text", help: "text or json"},
	}
	fs := flag.NewFlagSet("streamspace-go-agent", flag.ContinueOnError)
	if usage == nil {
		usage = io.Discard
	}
	fs.SetOutput(usage)
	byEnv := map[string]*setting{}
	for _, s := range settings {
		v := s.def
		if e := getenv(s.env); e != "" {
			v = e
		}
		s.val = new(string)
		fs.StringVar(s.val, s.flag, v, fmt.Sprintf("%s (env %s)", s.help, s.env))
		byEnv[s.env] = s
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (settings are --flags or environment variables)", fs.Arg(0))
	}
	get := func(env string) string { return strings.TrimSpace(*byEnv[env].val) }
	name := func(env string) string { return fmt.Sprintf("%s (--%s)", env, byEnv[env].flag) }
	var errs []error
	required := func(env string) string {
		v := get(env)
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", name(env)))
		}
		return v
	}
	number := func(env string, bits int, min uint64) uint64 {
		n, err := strconv.ParseUint(get(env), 10, bits)
		if err != nil || n < min {
			errs = append(errs, fmt.Errorf("%s: expected a whole number >= %d, found %q", name(env), min, get(env)))
		}
		return n
	}
	c := &Config{
		ControlPlaneURL: required("CONTROL_PLANE_URL"),
		AgentID:         required("AGENT_ID"),
		TLSCert:         required("AGENT_TLS_CERT"),
		TLSKey:          required("AGENT_TLS_KEY"),
		CACert:          required("AGENT_CA_CERT"),
		TLSServerName:   get("AGENT_TLS_SERVER_NAME"),
		DataDir:         required("AGENT_DATA_DIR"),
		Platform:        get("PLATFORM"),
		Region:          get("REGION"),
		MaxSessions:     uint32(number("MAX_SESSIONS", 32, 0)),
		MaxCPU:          number("MAX_CPU", 32, 0),
		MaxMemoryGB:     number("MAX_MEMORY", 32, 0),
		StopGrace:       time.Duration(number("STOP_GRACE_SECONDS", 32, 0)) * time.Second,
		BackoffBase:     time.Duration(number("BACKOFF_BASE_MS", 32, 1)) * time.Millisecond,
		BackoffMax:      time.Duration(number("BACKOFF_MAX_MS", 32, 1)) * time.Millisecond,
		LogFormat:       get("LOG_FORMAT"),
		PortLockDir:     get("PORT_LOCK_DIR"),
	}
	if c.ControlPlaneURL != "" {
		u, err := url.Parse(c.ControlPlaneURL)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("%s: expected https://HOST:PORT, found %q", name("CONTROL_PLANE_URL"), c.ControlPlaneURL))
		}
	}
	if c.Platform != "process" {
		errs = append(errs, fmt.Errorf("%s: this agent supports only \"process\", found %q", name("PLATFORM"), c.Platform))
	}
	if pr, err := ParsePortRange(get("SESSION_PORTS")); err != nil {
		errs = append(errs, fmt.Errorf("%s: %v", name("SESSION_PORTS"), err))
	} else {
		c.SessionPorts = pr
	}
	if c.BackoffBase > c.BackoffMax && c.BackoffMax > 0 {
		errs = append(errs, fmt.Errorf("%s must not exceed %s", name("BACKOFF_BASE_MS"), name("BACKOFF_MAX_MS")))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("%s: expected text or json, found %q", name("LOG_FORMAT"), c.LogFormat))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// HostPort is the control plane's HOST:PORT from ControlPlaneURL.
func (c *Config) HostPort() string {
	u, _ := url.Parse(c.ControlPlaneURL)
	return u.Host
}

// ServerName is the TLS name to verify: TLSServerName or the URL's host.
func (c *Config) ServerName() string {
	if c.TLSServerName != "" {
		return c.TLSServerName
	}
	u, _ := url.Parse(c.ControlPlaneURL)
	return u.Hostname()
}
