import Testing

@testable import KithNet

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Peer streams")
struct TCPStreamTests {
    /// Options the kernel refuses are reported, not lost (its owner logs them once): here on a
    /// descriptor that is no socket (/dev/null: ENOTSOCK), every one of them.
    @Test func refusedSocketOptionsAreReported() throws {
        let descriptor = open("/dev/null", O_RDWR)
        try #require(descriptor >= 0)
        let stream = TCPStream(descriptor: descriptor, timeoutMilliseconds: 100)
        #expect(stream.optionsNotSet == ["SO_RCVTIMEO", "SO_SNDTIMEO", "TCP_NODELAY", "TCP_USER_TIMEOUT"])
    }

    /// A real connection on loopback gets every option.
    @Test func aLoopbackConnectionGetsEveryOption() throws {
        let listener = try TCPListener(address: "127.0.0.1:0")
        let stream = try TCPStream.connect(to: "127.0.0.1:\(listener.port)", timeoutMilliseconds: 1_000)
        #expect(stream.optionsNotSet.isEmpty)
        let accepted = try listener.accept(timeoutMilliseconds: 1_000, connectionTimeoutMilliseconds: 1_000)
        #expect(accepted != nil && accepted?.optionsNotSet.isEmpty == true)
    }
}
