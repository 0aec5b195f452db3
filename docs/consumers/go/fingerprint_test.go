package main

import (
	"os"
	"testing"
)

// The fingerprints Java's SchemaNormalization and fastavro give these released versions (the values
// lensflow's producers put in the single-object header).
func TestFingerprintsMatchJavaAndFastavro(t *testing.T) {
	for file, want := range map[string]uint64{
		"../../../schemas/history/ImageAnalyzed/2.avsc": 0xeea62eb74b313489,
	} {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fingerprint(text)
		if err != nil || got != want {
			t.Fatalf("%s: got %016x (%v), want %016x", file, got, err, want)
		}
	}
}
