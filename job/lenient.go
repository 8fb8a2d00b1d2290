package job

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
)

// Lenient decoding: GitLab's entities serialise whatever Ruby holds, and
// a value of the expected meaning can come with another JSON type than the
// one Go expects: an integer as a string ("3600"), a string as a number
// (user: 1000), a boolean as "true". A payload the strict decoder refuses
// for such a type mismatch only is decoded again with each value converted
// to the type its field has, when it converts without loss.

// decodeLenient decodes raw into v (a pointer to a struct), converting
// mismatched scalars to the types of v's fields.
func decodeLenient(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var doc any
	if err := d.Decode(&doc); err != nil {
		return err
	}
	doc = fitType(doc, reflect.TypeOf(v).Elem())
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// fitType converts the scalars of v (decoded with UseNumber) that t's
// fields expect as another JSON type; anything else is left as it is.
func fitType(v any, t reflect.Type) any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch x := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for k, val := range x {
				if ft, ok := fields[k]; ok {
					x[k] = fitType(val, ft)
				}
			}
		case reflect.Map:
			for k, val := range x {
				x[k] = fitType(val, t.Elem())
			}
		}
	case []any:
		if t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8 {
			for i := range x {
				x[i] = fitType(x[i], t.Elem())
			}
		}
	case string:
		s := strings.TrimSpace(x)
		switch {
		case isIntKind(t.Kind()):
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				return json.Number(strconv.FormatInt(n, 10))
			}
			if s == "" {
				return nil
			}
		case t.Kind() == reflect.Bool:
			if b, err := strconv.ParseBool(s); err == nil {
				return b
			}
			if s == "" {
				return nil
			}
		}
	case json.Number:
		switch {
		case t.Kind() == reflect.String:
			return x.String()
		case t.Kind() == reflect.Bool:
			if n, err := x.Int64(); err == nil && (n == 0 || n == 1) {
				return n == 1
			}
		case isIntKind(t.Kind()):
			// 3600.0 is an integer too
			if f, err := x.Float64(); err == nil && f == float64(int64(f)) {
				return json.Number(strconv.FormatInt(int64(f), 10))
			}
		}
	case bool:
		if t.Kind() == reflect.String {
			return strconv.FormatBool(x)
		}
	}
	return v
}

func isIntKind(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// jsonFields maps the JSON names of t's fields (those of embedded structs
// included, as encoding/json sees them) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, ft := range jsonFields(f.Type) {
				if _, shadowed := out[k]; !shadowed {
					out[k] = ft
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
