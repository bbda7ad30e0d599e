package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func valid() map[string]string {
	return map[string]string{
		"CONTROL_PLANE_URL": "https://127.0.0.1:7443",
		"AGENT_ID":          "go-1",
		"AGENT_TLS_CERT":    "/c.pem",
		"AGENT_TLS_KEY":     "/k.pem",
		"AGENT_CA_CERT":     "/ca.pem",
		"AGENT_DATA_DIR":    "/tmp/d",
	}
}

func TestDefaultsAndEnvironment(t *testing.T) {
	c, err := Load(nil, env(valid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Platform != "process" || c.MaxSessions != 100 || c.SessionPorts != (PortRange{20000, 29999}) ||
		c.BackoffBase != 250*time.Millisecond || c.BackoffMax != 30*time.Second || c.LogFormat != "text" {
		t.Fatalf("defaults: %+v", c)
	}
	if c.HostPort() != "127.0.0.1:7443" || c.ServerName() != "127.0.0.1" {
		t.Fatalf("host %q name %q", c.HostPort(), c.ServerName())
	}
}

func TestFlagsOverrideTheEnvironment(t *testing.T) {
	c, err := Load([]string{"--agent-id", "go-2", "--tls-server-name=cp.example", "--session-ports", "31000-31010"}, env(valid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentID != "go-2" || c.ServerName() != "cp.example" || c.SessionPorts != (PortRange{31000, 31010}) {
		t.Fatalf("%+v", c)
	}
}

func TestErrorsNameTheVariable(t *testing.T) {
	cases := map[string]string{
		"CONTROL_PLANE_URL": "http://x:1",
		"AGENT_ID":          "",
		"PLATFORM":          "kubernetes",
		"SESSION_PORTS":     "99-100",
		"MAX_SESSIONS":      "-1",
		"BACKOFF_BASE_MS":   "0",
		"LOG_FORMAT":        "xml",
	}
	for k, v := range cases {
		e := valid()
		e[k] = v
		_, err := Load(nil, env(e), nil)
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%q: error %v does not name %s", k, v, err, k)
		}
	}
	_, err := Load(nil, env(map[string]string{}), nil)
	for _, k := range []string{"CONTROL_PLANE_URL (--control-plane-url)", "AGENT_ID", "AGENT_TLS_CERT", "AGENT_TLS_KEY", "AGENT_CA_CERT"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("missing %s not reported: %v", k, err)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string]PortRange{"20000-29999": {20000, 29999}, " 1024 - 1024 ": {1024, 1024}, "1024-65535": {1024, 65535}} {
		if got, err := ParsePortRange(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "20000", "1023-2000", "3000-2000", "a-b", "1024-65536", "-1-5"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
