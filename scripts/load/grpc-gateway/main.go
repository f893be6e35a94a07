// The peer for scripts/load: grpc-gateway (Debian's 1.6.4) in front of
// CustomerIdentity, the way its users deploy it: a generated reverse proxy,
// one gRPC client connection to the service, Go's net/http server.
//
// It checks no token (grpc-gateway has no authentication of its own), and it
// renders JSON with proto field names and every default field, as our
// gateway does, so both answer the same bytes.
//
// scripts/load generates `peer/identitypb` from a copy of
// proto/commerce/identity/v1/identity.proto (proto3 `optional` and the access
// option stripped: the old generators know neither) and builds this file in
// GOPATH mode under target/; nothing generated is committed.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"

	pb "peer/identitypb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "where the REST server listens")
	upstream := flag.String("upstream", "127.0.0.1:50052", "CustomerIdentity's gRPC address (host:port)")
	flag.Parse()

	ctx := context.Background()
	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard,
		&runtime.JSONPb{OrigName: true, EmitDefaults: true}))
	// Plaintext HTTP/2 to the service, as our gateway's upstream channel.
	opts := []grpc.DialOption{grpc.WithInsecure()}
	if err := pb.RegisterCustomerIdentityServiceHandlerFromEndpoint(ctx, mux, *upstream, opts); err != nil {
		log.Fatalf("grpc-gateway: cannot register CustomerIdentity at %s: %v", *upstream, err)
	}
	log.Printf("grpc-gateway listening on %s, CustomerIdentity at %s", *listen, *upstream)
	log.Fatal(http.ListenAndServe(*listen, mux))
}
