package process

import (
	"fmt"
	"strings"
)

// CheckSession accepts a DNS-1123 label: 1-63 of a-z, 0-9 and '-', starting
// and ending with a letter or digit. Session ids become file names.
func CheckSession(id string) error {
	ok := len(id) >= 1 && len(id) <= 63 && alnumLower(id[0]) && alnumLower(id[len(id)-1])
	for i := 0; ok && i < len(id); i++ {
		ok = alnumLower(id[i]) || id[i] == '-'
	}
	if !ok {
		return invalid("session_id", "a DNS label: 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit", id)
	}
	return nil
}

// CheckUser accepts 1-63 of ASCII letters, digits, '.', '_', '@' and '-',
// starting with a letter or digit: never "." or "..", never a separator.
func CheckUser(user string) error {
	ok := len(user) >= 1 && len(user) <= 63 && alnum(user[0])
	for i := 0; ok && i < len(user); i++ {
		ok = alnum(user[i]) || strings.IndexByte("._@-", user[i]) >= 0
	}
	if !ok {
		return invalid("user", "1-63 of letters, digits, '.', '_', '@' and '-', starting with a letter or digit", user)
	}
	return nil
}

func alnumLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
func alnum(c byte) bool      { return alnumLower(c) || c >= 'A' && c <= 'Z' }

func invalid(field, expected, found string) *Error {
	if len(found) > 80 {
		found = found[:80] + "..."
	}
	return &Error{Reason: reasonInvalid, Message: fmt.Sprintf("%s: expected %s, found %q", field, expected, found)}
}

// Substitute replaces "${PORT}", "${SESSION_ID}", "${USER}" and "${HOME}" in
// arg with their values; other text, including unknown "${...}", is kept.
func Substitute(arg string, vars map[string]string) string {
	pairs := make([]string, 0, 2*len(vars))
	for _, k := range []string{"PORT", "SESSION_ID", "USER", "HOME"} {
		if v, ok := vars[k]; ok {
			pairs = append(pairs, "${"+k+"}", v)
		}
	}
	return strings.NewReplacer(pairs...).Replace(arg)
}
