// A hookrelay receiver in Go: every delivery is verified with the Standard Webhooks library before it is used.
//
// UNTESTED: no Go toolchain was available where these docs were written and tested (docs/examples/test.sh skips
// it). The Python and Node receivers beside it are tested; this one follows the library's documented API
// (NewWebhook, Verify).
//
//	go mod init example.com/receiver
//	go get github.com/standard-webhooks/standard-webhooks/libraries
//	WEBHOOK_SECRET='whsec_...' go run . 8000      # listens on 127.0.0.1:8000, POST /webhook
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"sync"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Most bytes read from a request body: hookrelay's default payload limit is 256 KiB.
const maxBody = 1 << 20

func main() {
	port := "8000"
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	wh, err := standardwebhooks.NewWebhook(os.Getenv("WEBHOOK_SECRET"))
	if err != nil {
		log.Fatalf("WEBHOOK_SECRET: %v", err)
	}
	// Event ids already handled. hookrelay delivers at least once and keeps webhook-id across retries and replays,
	// so a repeated id is a repeat of an event already handled. Keep these in your database, not in memory.
	var mu sync.Mutex
	handled := map[string]bool{}

	http.HandleFunc("POST /webhook", func(w http.ResponseWriter, r *http.Request) {
		// The raw bytes as received: re-encoded JSON would not match the signature.
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		// Checks webhook-signature against the secret and webhook-timestamp against a 5-minute tolerance.
		if err := wh.Verify(body, r.Header); err != nil {
			// Not from hookrelay, altered on the way, or too old to trust: refuse it.
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var payload any
		if err := json.Unmarshal(body, &payload); err != nil {
			http.Error(w, "payload is not JSON", http.StatusBadRequest)
			return
		}
		id := r.Header.Get("webhook-id")
		mu.Lock()
		first := !handled[id]
		handled[id] = true
		mu.Unlock()
		if first {
			log.Printf("verified %s %s (attempt %s): %v", r.Header.Get("hookrelay-event-type"), id,
				r.Header.Get("hookrelay-attempt"), payload)
		}
		// Any 2xx tells hookrelay the delivery succeeded; answer quickly and do slow work afterwards.
		w.WriteHeader(http.StatusNoContent)
	})
	log.Printf("receiver listening on 127.0.0.1:%s", port)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
