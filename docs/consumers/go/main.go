// A downstream consumer of images.analyzed in Go, without lensflow: franz-go plus hamba/avro.
//
//	go run . BOOTSTRAP TOPIC SCHEMAS_DIR [MAX]
//
// Values are Avro single-object encoded (C3 01 + 8-byte little-endian CRC-64-AVRO fingerprint + body).
// The writer schema is found by that fingerprint (computed in fingerprint.go) among every released version of ImageAnalyzed
// (schemas/history/ImageAnalyzed/*.avsc, self-contained) and resolved to the newest one, so records of
// any version in the topic are read (a field a version lacks takes the newest schema's default).
// Repeats a crash can cause are dropped by (image_id, run_id, analysis_version). Prints one line per
// event: image_id, run_id, status, caption, tab-separated. Stops after MAX events, or after 15 s
// without any.
package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
)

type decoder struct {
	reader  avro.Schema
	writers map[uint64]avro.Schema // CRC-64-AVRO fingerprint -> schema resolved to the reader
}

func loadDecoder(schemas string) (*decoder, error) {
	files, err := filepath.Glob(filepath.Join(schemas, "history", "ImageAnalyzed", "*.avsc"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no ImageAnalyzed versions under %s/history: %v", schemas, err)
	}
	version := func(p string) int { n, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(p), ".avsc")); return n }
	sort.Slice(files, func(i, j int) bool { return version(files[i]) < version(files[j]) })
	parsed := make([]avro.Schema, 0, len(files))
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		s, err := avro.ParseBytesWithCache(text, "", &avro.SchemaCache{}) // each version in its own namespace cache
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		parsed = append(parsed, s)
	}
	d := &decoder{reader: parsed[len(parsed)-1], writers: map[uint64]avro.Schema{}}
	compat := avro.NewSchemaCompatibility()
	for i, w := range parsed {
		text, _ := os.ReadFile(files[i])
		fp, err := fingerprint(text) // see fingerprint.go: not hamba's FingerprintUsing
		if err != nil {
			return nil, fmt.Errorf("%s: %w", files[i], err)
		}
		resolved, err := compat.Resolve(d.reader, w)
		if err != nil {
			return nil, fmt.Errorf("version %d does not resolve to the newest: %w", version(files[i]), err)
		}
		d.writers[fp] = resolved
	}
	return d, nil
}

func (d *decoder) decode(value []byte) (map[string]any, error) {
	if len(value) < 10 || value[0] != 0xC3 || value[1] != 0x01 {
		return nil, fmt.Errorf("not Avro single-object encoding")
	}
	fp := binary.LittleEndian.Uint64(value[2:10])
	writer, ok := d.writers[fp]
	if !ok {
		return nil, fmt.Errorf("unknown writer schema fingerprint %016x", fp)
	}
	var out map[string]any
	if err := avro.Unmarshal(writer, value[10:], &out); err != nil {
		return nil, err
	}
	return out, nil
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: go run . BOOTSTRAP TOPIC SCHEMAS_DIR [MAX]")
		os.Exit(2)
	}
	bootstrap, topic, schemas := os.Args[1], os.Args[2], os.Args[3]
	max := int(^uint(0) >> 1)
	if len(os.Args) > 4 {
		max, _ = strconv.Atoi(os.Args[4])
	}
	dec, err := loadDecoder(schemas)
	if err != nil {
		fmt.Fprintln(os.Stderr, "analyzed-consumer:", err)
		os.Exit(1)
	}
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "analyzed-consumer:", err)
		os.Exit(1)
	}
	defer client.Close()
	seen := map[string]bool{}
	events := 0
	idleSince := time.Now()
	for events < max && time.Since(idleSince) < 15*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fetches := client.PollFetches(ctx)
		cancel()
		fetches.EachRecord(func(rec *kgo.Record) {
			idleSince = time.Now()
			r, err := dec.decode(rec.Value)
			if err != nil {
				fmt.Fprintf(os.Stderr, "analyzed-consumer: %s[%d]@%d: %v\n", rec.Topic, rec.Partition, rec.Offset, err)
				return
			}
			key := fmt.Sprintf("%v|%v|%v", r["image_id"], r["run_id"], r["analysis_version"])
			if !seen[key] {
				seen[key] = true
				events++
				caption := r["caption"]
				if caption == nil {
					caption = ""
				}
				fmt.Printf("%v\t%v\t%v\t%v\n", r["image_id"], r["run_id"], r["status"], caption)
			}
		})
	}
}
