package job

import (
	"encoding/json"
	"fmt"
	"strconv"
)

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

// Expand replaces $NAME and ${NAME} in s with the values of the variables,
// the way GitLab Runner expands job variables: in one pass over s, with
// the values as they are (a value that itself holds $OTHER is not expanded
// again), "$$" giving a literal "$", the shell's special parameters ($*,
// $#, $@, $!, $?, $0…$9) and unknown names giving "". A "$" that starts
// no name is dropped, as in Go 1.10's os.Expand that GitLab Runner keeps;
// a "$" ending s is kept.
//
// The result is at most len(s) + len(s)/2 × the longest value long: no
// variable can make it grow further (no recursion).
func (vs Variables) Expand(s string) string {
	var out []byte
	done := 0 // s[:done] is in out
	for i := 0; i+1 < len(s); i++ {
		if s[i] != '$' {
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(s)+16)
		}
		out = append(out, s[done:i]...)
		name, width := refName(s[i+1:])
		out = append(out, vs.value(name)...)
		i += width
		done = i + 1
	}
	if out == nil {
		return s
	}
	return string(append(out, s[done:]...))
}

// Expanded returns the variables with every value that is not raw
// expanded once (Expand) against the values as given: what a job's
// environment gets. Referring to oneself gives one's own value as given.
func (vs Variables) Expanded() Variables {
	out := make(Variables, len(vs))
	for i, v := range vs {
		if !v.Raw {
			v.Value = vs.Expand(v.Value)
		}
		out[i] = v
	}
	return out
}

// value is what $name expands to.
func (vs Variables) value(name string) string {
	switch name {
	case "$":
		return "$"
	case "*", "#", "@", "!", "?", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9":
		return ""
	}
	return vs.Get(name)
}

// refName reads the name after a "$" at the start of s (s is not empty):
// {NAME}, a special one-character parameter, or a run of letters, digits
// and underscores (possibly empty). width is how many bytes of s it took.
func refName(s string) (name string, width int) {
	if s[0] == '{' {
		if len(s) > 2 && isSpecialParam(s[1]) && s[2] == '}' {
			return s[1:2], 3
		}
		for i := 1; i < len(s); i++ {
			if s[i] == '}' {
				return s[1:i], i + 1
			}
		}
		return "", 1 // no closing brace: the brace goes with the "$"
	}
	if isSpecialParam(s[0]) {
		return s[:1], 1
	}
	n := 0
	for n < len(s) && isNameByte(s[n]) {
		n++
	}
	return s[:n], n
}

func isSpecialParam(c byte) bool {
	switch c {
	case '*', '#', '$', '@', '!', '?', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return true
	}
	return false
}

func isNameByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// UnmarshalJSON reads a variable as GitLab may send it: value a string, or
// null (a variable without value), or a number or boolean (kept as its
// JSON text); the flags booleans or their string forms. Every package that
// decodes a payload's variables gets the same tolerance.
func (v *Variable) UnmarshalJSON(b []byte) error {
	var in struct {
		Key    json.RawMessage `json:"key"`
		Value  json.RawMessage `json:"value"`
		Public json.RawMessage `json:"public"`
		Masked json.RawMessage `json:"masked"`
		File   json.RawMessage `json:"file"`
		Raw    json.RawMessage `json:"raw"`
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	var out Variable
	var err error
	if out.Key, err = scalarString(in.Key); err != nil {
		return fmt.Errorf("variable key: %w", err)
	}
	if out.Value, err = scalarString(in.Value); err != nil {
		return fmt.Errorf("variable %s: value: %w", out.Key, err)
	}
	for _, f := range []struct {
		raw json.RawMessage
		dst *bool
	}{{in.Public, &out.Public}, {in.Masked, &out.Masked}, {in.File, &out.File}, {in.Raw, &out.Raw}} {
		if *f.dst, err = scalarBool(f.raw); err != nil {
			return fmt.Errorf("variable %s: %w", out.Key, err)
		}
	}
	*v = out
	return nil
}

// scalarString reads a JSON string, number, boolean or null as a string.
func scalarString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), nil
	}
	var t bool
	if json.Unmarshal(raw, &t) == nil {
		return strconv.FormatBool(t), nil
	}
	return "", fmt.Errorf("%.40s is not a string", raw)
}

// scalarBool reads a JSON boolean, "true"/"false", 0/1 or null.
func scalarBool(raw json.RawMessage) (bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, nil
	}
	var t bool
	if json.Unmarshal(raw, &t) == nil {
		return t, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return false, nil
		}
		return strconv.ParseBool(s)
	}
	switch string(raw) {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("%.40s is not a boolean", raw)
}
