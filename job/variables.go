package job

import "strings"

// Variable is one entry of the payload's variables list.
type Variable struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Public bool   `json:"public"`
	Masked bool   `json:"masked"`
	File   bool   `json:"file,omitempty"`
	Raw    bool   `json:"raw,omitempty"`
}

// Variables is the payload's ordered variables list. Later entries win.
type Variables []Variable

// Get returns the value of the last variable named key, or "".
func (vs Variables) Get(key string) string {
	v, _ := vs.Lookup(key)
	return v
}

// Lookup is Get that also tells whether the variable exists.
func (vs Variables) Lookup(key string) (string, bool) {
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].Key == key {
			return vs[i].Value, true
		}
	}
	return "", false
}

// Expand replaces $NAME and ${NAME} in s with the variables' values, like
// Go's os.Expand: unknown names expand to "", "$$" is kept as "$" only by
// os.Expand's rules (a lone "$" followed by a non-name char is dropped).
// Values are themselves expanded (recursively, up to a bounded depth) unless
// the variable is raw, the way GitLab Runner expands variable references.
func (vs Variables) Expand(s string) string {
	return vs.expand(s, 0)
}

const maxExpandDepth = 10

func (vs Variables) expand(s string, depth int) string {
	if !strings.Contains(s, "$") {
		return s
	}
	return expandFunc(s, func(name string) string {
		for i := len(vs) - 1; i >= 0; i-- {
			if vs[i].Key != name {
				continue
			}
			if vs[i].Raw || depth >= maxExpandDepth {
				return vs[i].Value
			}
			return vs.expand(vs[i].Value, depth+1)
		}
		return ""
	})
}

// expandFunc is os.Expand's algorithm (kept here so that job stays a leaf
// with exactly the semantics we test against).
func expandFunc(s string, mapping func(string) string) string {
	var buf []byte
	i := 0
	for j := 0; j < len(s); j++ {
		if s[j] == '$' && j+1 < len(s) {
			if buf == nil {
				buf = make([]byte, 0, 2*len(s))
			}
			buf = append(buf, s[i:j]...)
			name, w := shellName(s[j+1:])
			if name == "" && w > 0 {
				// invalid syntax: eat the characters
			} else if name == "" {
				buf = append(buf, s[j])
			} else {
				buf = append(buf, mapping(name)...)
			}
			j += w
			i = j + 1
		}
	}
	if buf == nil {
		return s
	}
	return string(buf) + s[i:]
}

func isShellSpecialVar(c uint8) bool {
	switch c {
	case '*', '#', '$', '@', '!', '?', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return true
	}
	return false
}

func isAlphaNum(c uint8) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func shellName(s string) (string, int) {
	if s[0] == '{' {
		if len(s) > 2 && isShellSpecialVar(s[1]) && s[2] == '}' {
			return s[1:2], 3
		}
		for i := 1; i < len(s); i++ {
			if s[i] == '}' {
				if i == 1 {
					return "", 2
				}
				return s[1:i], i + 1
			}
		}
		return "", 1
	}
	if isShellSpecialVar(s[0]) {
		return s[0:1], 1
	}
	var i int
	for i = 0; i < len(s) && isAlphaNum(s[i]); i++ {
	}
	return s[:i], i
}
