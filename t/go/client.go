// client.go - Go's net/rpc with ugorji's MessagePack-RPC codec (Debian
// golang-github-ugorji-go-codec-dev), the most used MessagePack-RPC client
// for Go, against demuxd (t/380-go-client.t builds it offline, GOPATH mode).
//
//	client SOCKET
//
// It makes a call, then eight 200 ms calls in flight while one more fails,
// then one more call, and prints what each step saw, one line each.
package main

import (
	"fmt"
	"net"
	"net/rpc"
	"os"
	"sync"

	"github.com/ugorji/go/codec"
)

func main() {
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(2)
	}
	var h codec.MsgpackHandle
	h.RawToString = true
	c := rpc.NewClientWithCodec(codec.MsgpackSpecRpc.ClientCodec(conn, &h))

	var reply []interface{}
	err = c.Call("echo.echo", codec.MsgpackSpecRpcMultiArgs{1, "two"}, &reply)
	fmt.Printf("echo: %v err=%v\n", reply, err)

	var wg sync.WaitGroup
	inflight := make([]error, 8)
	for i := range inflight {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var r interface{}
			inflight[i] = c.Call("sleep.sleep",
				codec.MsgpackSpecRpcMultiArgs{200}, &r)
		}(i)
	}
	var r interface{}
	err = c.Call("no.such", codec.MsgpackSpecRpcMultiArgs{}, &r)
	fmt.Printf("error: %v\n", err)
	wg.Wait()
	ok := 0
	for _, e := range inflight {
		if e == nil {
			ok++
		}
	}
	fmt.Printf("inflight ok: %d of %d\n", ok, len(inflight))

	reply = nil
	err = c.Call("echo.echo", codec.MsgpackSpecRpcMultiArgs{3}, &reply)
	fmt.Printf("after: %v err=%v\n", reply, err)
}
