import CLinux

#if canImport(Glibc)
    import Glibc
#endif

/// A listening TCP socket, non-blocking, bound to an IPv4 or IPv6 literal address.
struct Listener {
    let descriptor: Int32
    let port: UInt16

    /// Binds `host:port` (port 0: any free port). `reusePort` lets several loops each have a
    /// listener on the same port, with the kernel spreading connections between them.
    static func bind(host: String, port: UInt16, reusePort: Bool, backlog: Int32 = 1_024) throws(SystemError) -> Listener {
        var (address, length, family) = try socketAddress(host: host, port: port)
        let descriptor = try systemValue("socket") {
            socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            try setOption(descriptor, SOL_SOCKET, SO_REUSEADDR, 1)
            if reusePort { try setOption(descriptor, SOL_SOCKET, SO_REUSEPORT, 1) }
            _ = try withUnsafePointer(to: &address) { pointer throws(SystemError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                    try systemValue("bind") { Glibc.bind(descriptor, sa, length) }
                }
            }
            try systemValue("listen") { listen(descriptor, backlog) }
            var bound = sockaddr_storage()
            var boundLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = try withUnsafeMutablePointer(to: &bound) { pointer throws(SystemError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                    try systemValue("getsockname") { getsockname(descriptor, sa, &boundLength) }
                }
            }
            // sin_port and sin6_port both sit at offset 2, in network byte order.
            let boundPort = withUnsafeBytes(of: &bound) { UInt16(bigEndian: $0.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) }
            return Listener(descriptor: descriptor, port: boundPort)
        } catch {
            close(descriptor)
            throw error
        }
    }

    /// The next pending connection (non-blocking, close-on-exec), or nil when there is none.
    func accept() throws(SystemError) -> Int32? {
        switch try system("accept4", { kith_accept_nonblocking(descriptor) }) {
        case .done(let connection):
            try? setOption(connection, Int32(IPPROTO_TCP), TCP_NODELAY, 1)  // the connection works without it, only slower
            return connection
        case .wouldBlock: return nil
        }
    }
}

/// The socket address of an IPv4 or IPv6 literal and a port.
func socketAddress(host: String, port: UInt16) throws(SystemError) -> (sockaddr_storage, socklen_t, Int32) {
    var storage = sockaddr_storage()
    var v4 = sockaddr_in()
    var v6 = sockaddr_in6()
    if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
        v4.sin_family = sa_family_t(AF_INET)
        v4.sin_port = port.bigEndian
        withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &v4) { target.copyMemory(from: $0) } }
        return (storage, socklen_t(MemoryLayout<sockaddr_in>.size), AF_INET)
    }
    if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &storage) { target in withUnsafeBytes(of: &v6) { target.copyMemory(from: $0) } }
        return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size), AF_INET6)
    }
    throw SystemError(call: "inet_pton \(host)", errno: EINVAL)
}

/// `socketAddress` for an IP literal; otherwise every address of the name (IPv4 and IPv6, in the
/// system resolver's order), to try in turn. It blocks: for clients only, never on an event loop.
func resolvedAddresses(host: String, port: UInt16) throws(SystemError) -> [(sockaddr_storage, socklen_t, Int32)] {
    if let literal = try? socketAddress(host: host, port: port) { return [literal] }  // not a literal: resolved below
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var found: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, String(port), &hints, &found)
    guard status == 0, found != nil else { throw SystemError(call: "resolve \(host): \(String(cString: gai_strerror(status)))", errno: EINVAL) }
    defer { freeaddrinfo(found) }
    var addresses: [(sockaddr_storage, socklen_t, Int32)] = []
    var next = found
    while let entry = next {
        var storage = sockaddr_storage()
        let length = entry.pointee.ai_addrlen
        withUnsafeMutableBytes(of: &storage) { target in
            target.copyMemory(from: UnsafeRawBufferPointer(start: entry.pointee.ai_addr, count: Int(length)))
        }
        addresses.append((storage, length, entry.pointee.ai_family))
        next = entry.pointee.ai_next
    }
    return addresses
}

func setOption(_ descriptor: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(SystemError) {
    var value = value
    try systemValue("setsockopt") { setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
}
