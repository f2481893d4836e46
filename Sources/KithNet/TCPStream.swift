import CLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A blocking TCP connection with send and receive timeouts, for peer links (one thread each).
public final class TCPStream: @unchecked Sendable {
    private let descriptor: Int32
    private var closed = false
    /// The socket options that could not be set: the link works without them, only worse (no
    /// timeouts, slower, slower to notice a cut). This module has no log; its owner says so.
    public private(set) var optionsNotSet: [String] = []

    init(descriptor: Int32, timeoutMilliseconds: Int) {
        self.descriptor = descriptor
        var timeout = timeval(tv_sec: timeoutMilliseconds / 1_000, tv_usec: (timeoutMilliseconds % 1_000) * 1_000)
        for (name, option) in [("SO_RCVTIMEO", SO_RCVTIMEO), ("SO_SNDTIMEO", SO_SNDTIMEO)]
        where setsockopt(descriptor, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size)) != 0 {
            optionsNotSet.append(name)
        }
        set("TCP_NODELAY") { () throws(SystemError) in try setOption(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
        // Data the peer's kernel has not acknowledged for this long closes the connection. Without
        // it a link cut by a partition kept its socket, retransmitting with exponential backoff,
        // and after the heal carried nothing until the next retransmission: 24 s to rejoin after
        // a 30 s partition. Kernels acknowledge whatever the process is doing, so a slow peer is
        // not cut off.
        set("TCP_USER_TIMEOUT") { () throws(SystemError) in
            try setOption(descriptor, Int32(IPPROTO_TCP), Self.userTimeoutOption, Self.userTimeoutMilliseconds)
        }
    }

    private func set(_ name: String, _ body: () throws(SystemError) -> Void) {
        do { try body() } catch { optionsNotSet.append(name) }
    }

    /// TCP_USER_TIMEOUT (RFC 5482; Linux `netinet/tcp.h`), which Glibc's Swift module does not name.
    static let userTimeoutOption: Int32 = 18
    static let userTimeoutMilliseconds: Int32 = 5_000

    /// Connects to `host:port` (an IP literal or `localhost`), waiting at most `timeoutMilliseconds`.
    public static func connect(to address: String, timeoutMilliseconds: Int) throws(SystemError) -> TCPStream {
        let (host, port) = try splitAddress(address)
        var (storage, length, family) = try socketAddress(host: host, port: port)
        let descriptor = try systemValue("socket") { socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        // Bounded connect: SO_SNDTIMEO also bounds connect(2) on Linux.
        let stream = TCPStream(descriptor: descriptor, timeoutMilliseconds: timeoutMilliseconds)
        _ = try withUnsafePointer(to: &storage) { pointer throws(SystemError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                try systemValue("connect") { Glibc.connect(descriptor, sa, length) }
            }
        }
        return stream
    }

    /// Up to `maximum` bytes; empty at end of stream. Throws on timeout (EAGAIN) and errors.
    public func read(maximum: Int = 65_536) throws(SystemError) -> [UInt8] {
        var chunk = [UInt8](repeating: 0, count: maximum)
        let count = try systemValue("read") { chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) } }
        return Array(chunk[0..<count])
    }

    public func write(_ bytes: [UInt8]) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let written = try systemValue("write") {
                bytes.withUnsafeBytes { send(descriptor, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            offset += written
        }
    }

    /// Wakes a thread blocked in `read` (it gets end of stream) and releases the socket.
    public func close() {
        guard !closed else { return }
        closed = true
        shutdown(descriptor, Int32(SHUT_RDWR))
    }

    deinit { Glibc.close(descriptor) }
}

/// A blocking TCP listener for peer links.
public final class TCPListener: @unchecked Sendable {
    private let listener: Listener
    public var port: UInt16 { listener.port }

    public init(address: String) throws(SystemError) {
        let (host, port) = try splitAddress(address)
        listener = try Listener.bind(host: host, port: port, reusePort: false, backlog: 128)
    }

    /// The next connection, or nil if none arrived within `timeoutMilliseconds`.
    public func accept(timeoutMilliseconds: Int32, connectionTimeoutMilliseconds: Int) throws(SystemError) -> TCPStream? {
        var descriptor = pollfd(fd: listener.descriptor, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, timeoutMilliseconds)
        guard ready > 0, let connection = try listener.accept() else { return nil }
        // The accepted socket inherits O_NONBLOCK; peer links block with timeouts instead.
        _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) & ~O_NONBLOCK)
        return TCPStream(descriptor: connection, timeoutMilliseconds: connectionTimeoutMilliseconds)
    }

    deinit { Glibc.close(listener.descriptor) }
}

/// `host:port`, `[v6]:port` or `localhost:port` → an IP literal and a port.
func splitAddress(_ address: String) throws(SystemError) -> (String, UInt16) {
    guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
        throw SystemError(call: "parse address \(address)", errno: EINVAL)
    }
    var host = String(address[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return (host == "localhost" ? "127.0.0.1" : host, port)
}
