package main

// The Avro specification's Parsing Canonical Form and its CRC-64-AVRO (Rabin) fingerprint, which the
// single-object encoding's header carries. Written out here because the Go libraries tried (hamba/avro
// 2.31, goavro 2.13) keep "logicalType" in their canonical form, so their fingerprints of a schema
// with a timestamp-millis field differ from Java's SchemaNormalization, fastavro's and lensflow's.

import (
	"encoding/json"
	"strconv"
	"strings"
)

var primitives = map[string]bool{"null": true, "boolean": true, "int": true, "long": true, "float": true,
	"double": true, "bytes": true, "string": true}

func fullName(name, namespace string) string {
	if strings.Contains(name, ".") || namespace == "" {
		return name
	}
	return namespace + "." + name
}

// canonical writes the Parsing Canonical Form of one (sub)schema: [FULLNAMES] [STRIP] [ORDER] [STRINGS]
// [WHITESPACE] of the specification; ns is the enclosing namespace.
func canonical(b *strings.Builder, s any, ns string) {
	quote := func(v string) { q, _ := json.Marshal(v); b.Write(q) }
	switch t := s.(type) {
	case string:
		if primitives[t] {
			quote(t)
		} else {
			quote(fullName(t, ns))
		}
	case []any:
		b.WriteByte('[')
		for i, branch := range t {
			if i > 0 {
				b.WriteByte(',')
			}
			canonical(b, branch, ns)
		}
		b.WriteByte(']')
	case map[string]any:
		kind, _ := t["type"].(string)
		if primitives[kind] {
			quote(kind) // {"type": "long", "logicalType": ...} is "long"
			return
		}
		b.WriteString(`{`)
		if kind == "record" || kind == "enum" || kind == "fixed" || kind == "error" {
			name, _ := t["name"].(string)
			if space, ok := t["namespace"].(string); ok && !strings.Contains(name, ".") {
				ns = space
			}
			full := fullName(name, ns)
			if i := strings.LastIndex(full, "."); i >= 0 {
				ns = full[:i]
			}
			b.WriteString(`"name":`)
			quote(full)
			b.WriteString(`,`)
		}
		b.WriteString(`"type":`)
		if _, nested := t["type"].(string); nested {
			quote(kind)
		} else {
			canonical(b, t["type"], ns)
		}
		if fields, ok := t["fields"].([]any); ok {
			b.WriteString(`,"fields":[`)
			for i, f := range fields {
				field := f.(map[string]any)
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(`{"name":`)
				quote(field["name"].(string))
				b.WriteString(`,"type":`)
				canonical(b, field["type"], ns)
				b.WriteByte('}')
			}
			b.WriteByte(']')
		}
		if symbols, ok := t["symbols"].([]any); ok {
			b.WriteString(`,"symbols":`)
			q, _ := json.Marshal(symbols)
			b.Write(q)
		}
		for _, key := range []string{"items", "values"} {
			if v, ok := t[key]; ok {
				b.WriteString(`,"` + key + `":`)
				canonical(b, v, ns)
			}
		}
		if size, ok := t["size"].(float64); ok {
			b.WriteString(`,"size":` + strconv.FormatInt(int64(size), 10))
		}
		b.WriteByte('}')
	}
}

// fingerprint is the CRC-64-AVRO fingerprint of a schema's JSON text.
func fingerprint(schemaJSON []byte) (uint64, error) {
	var s any
	if err := json.Unmarshal(schemaJSON, &s); err != nil {
		return 0, err
	}
	var b strings.Builder
	canonical(&b, s, "")
	return rabin([]byte(b.String())), nil
}

const empty = 0xc15d213aa4d7a795

var table = func() (t [256]uint64) {
	for i := range t {
		fp := uint64(i)
		for j := 0; j < 8; j++ {
			fp = (fp >> 1) ^ (empty & -(fp & 1))
		}
		t[i] = fp
	}
	return
}()

func rabin(data []byte) uint64 {
	fp := uint64(empty)
	for _, c := range data {
		fp = (fp >> 8) ^ table[byte(fp)^c]
	}
	return fp
}
