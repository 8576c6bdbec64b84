// Package export_wit_world is a test fixture: a hostile Go rules guest (wit-bindgen's Go
// generator, Go's wasip1 port, the preview1 adapter), misbehaving on request through the
// `x-probe` header the host passes as metadata. It shows the host's limits hold for Go as they do
// for the Rust, Python, JavaScript and C probes:
//
//   - `loop`: spins forever (only the epoch deadline stops it);
//   - `memory`: keeps allocating and touching 16 MiB blocks (the memory cap; Go's runtime
//     aborts when the allocation fails);
//   - `recursion`: unbounded recursion (Go grows its goroutine stack on the heap until the
//     memory cap, or the runtime's 1 GB stack limit, ends it);
//   - `huge`: returns a reason of `x-probe-mib` MiB, default 32 (refused before the host copies it);
//   - `flood`: prints 64 MiB to stdout (granted or not, the host keeps at most 16 KiB);
//   - `infer-flood`: calls `inference.infer` 10 000 times, ignoring errors (capped by the host);
//   - `file`, `env`: opens a file, reads the environment, and says what happened;
//   - anything else: accepts.
//
// Built by `just guests` like guests/rules-go. It is not a production guest; guests/rules-go is
// the example to copy.
package export_wit_world

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"wit_component/tessera_vision_inference"
	"wit_component/tessera_vision_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type (
	prediction = tessera_vision_types.Prediction
	metadata   = []witTypes.Tuple2[string, string]
	decision   = tessera_vision_types.Decision
	witError   = tessera_vision_types.Error
	result     = witTypes.Result[decision, witError]
)

// Where the memory probe keeps its blocks, so they stay alive.
var hoard [][]byte

func get(meta metadata, key string) string {
	for _, entry := range meta {
		if entry.F0 == key {
			return entry.F1
		}
	}
	return ""
}

func recurse(n int) int {
	var frame [256]byte
	frame[n%len(frame)] = byte(n)
	return recurse(n+1) + int(frame[0])
}

// Decide is the world's export.
func Decide(preds []prediction, meta metadata, config metadata) result {
	mib := func(def int) int {
		if n, err := strconv.Atoi(get(meta, "x-probe-mib")); err == nil && n > 0 {
			return n
		}
		return def
	}
	reason := "probe accepts"
	switch get(meta, "x-probe") {
	case "loop":
		for n := 0; ; n++ {
			if n < 0 {
				break
			}
		}
	case "memory":
		for {
			block := make([]byte, 16<<20)
			for i := range block {
				block[i] = 1
			}
			hoard = append(hoard, block)
		}
	case "recursion":
		reason = fmt.Sprintf("recursion returned %d", recurse(0))
	case "huge":
		reason = strings.Repeat("x", mib(32)<<20)
	case "flood":
		line := strings.Repeat("y", 1023) + "\n"
		for i := 0; i < 64<<10; i++ {
			os.Stdout.WriteString(line)
		}
		reason = "flooded"
	case "infer-flood":
		input := tessera_vision_types.Tensor{Shape: []uint32{1, 3, 224, 224}, Data: make([]float32, 3*224*224)}
		answered := 0
		for i := 0; i < 10000; i++ {
			if tessera_vision_inference.Infer("shapes", witTypes.None[string](), input).IsOk() {
				answered++
			}
		}
		reason = fmt.Sprintf("%d inferences answered", answered)
	case "file":
		if f, err := os.Open("/etc/passwd"); err == nil {
			f.Close()
			reason = "file ok: opened"
		} else {
			reason = "file " + err.Error()
		}
	case "env":
		reason = fmt.Sprintf("env %d vars", len(os.Environ()))
	}
	return witTypes.Ok[decision, witError](decision{Accepted: true, Reason: reason, Tags: []string{}})
}
