import KithHTTP

#if canImport(Glibc)
    import Glibc
#endif

/// A small blocking HTTP/1.1 client for the operator CLI: one keep-alive connection, requests
/// sent one at a time, responses framed by Content-Length (what Kith's server always sends).
public final class HTTPClient {
    public struct Response: Sendable {
        public var status: Int
        public var headers: [HTTPHeader]
        public var body: [UInt8]

        public func header(_ name: String) -> String? {
            headers.first { $0.hasName(name) }?.value
        }
    }

    private let host: String
    private let port: UInt16
    private let timeoutSeconds: Int
    private var descriptor: Int32 = -1
    private var buffer: [UInt8] = []

    /// `address` as `NodeAddress` reads it: `host:port`, `http://host:port`, a host alone
    /// (port 7080), IPv6 literals; host names are resolved when the client connects.
    public init(address: String, timeoutSeconds: Int = 30) throws(NodeAddress.Invalid) {
        let parsed = try NodeAddress(parsing: address)
        self.host = parsed.host
        self.port = parsed.port
        self.timeoutSeconds = timeoutSeconds
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    public func request(_ method: String, _ target: String, headers: [HTTPHeader] = [], body: [UInt8] = []) throws(SystemError) -> Response {
        if descriptor < 0 { try connect() }
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\nContent-Length: \(body.count)\r\n"
        for header in headers { head += "\(header.name): \(header.value)\r\n" }
        try send(Array((head + "\r\n").utf8) + body)
        let response = try readResponse()
        if let connection = response.header("connection"), HTTPHeader.equalIgnoringASCIICase(connection, "close") {
            close(descriptor)
            descriptor = -1
            buffer.removeAll()
        }
        return response
    }

    /// Connects to the first of the host's addresses that answers.
    private func connect() throws(SystemError) {
        var failure = SystemError(call: "connect \(host)", errno: EHOSTUNREACH)
        for (address, length, family) in try resolvedAddresses(host: host, port: port) {
            var storage = address
            do {
                descriptor = try connect(to: &storage, length, family)
                return
            } catch {
                failure = error
            }
        }
        throw failure
    }

    private func connect(to storage: inout sockaddr_storage, _ length: socklen_t, _ family: Int32) throws(SystemError) -> Int32 {
        let socketDescriptor = try systemValue("socket") { socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(socketDescriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(socketDescriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        do {
            _ = try withUnsafePointer(to: &storage) { pointer throws(SystemError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                    try systemValue("connect") { Glibc.connect(socketDescriptor, sa, length) }
                }
            }
        } catch {
            close(socketDescriptor)
            throw error
        }
        return socketDescriptor
    }

    private func send(_ bytes: [UInt8]) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let written = try systemValue("write") { bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) } }
            offset += written
        }
    }

    private func readResponse() throws(SystemError) -> Response {
        while true {
            if let end = buffer.firstRange(of: Array("\r\n\r\n".utf8)) {
                // Lines end in CRLF: split at LF, drop the CR.
                let lines = buffer[..<end.lowerBound].split(separator: 0x0A, omittingEmptySubsequences: false)
                    .map { $0.last == 0x0D ? $0.dropLast() : $0 }
                let statusParts = lines[0].split(separator: UInt8(ascii: " "))
                guard statusParts.count >= 2, let status = Int(String(decoding: statusParts[1], as: UTF8.self)) else {
                    throw SystemError(call: "read response (malformed status line)", errno: EPROTO)
                }
                let headers = lines.dropFirst().compactMap { HTTPRequestParser.parseHeader($0) }
                let length = Int(headers.first { $0.hasName("content-length") }?.value ?? "0") ?? 0
                if buffer.count >= end.upperBound + length {
                    let body = Array(buffer[end.upperBound..<end.upperBound + length])
                    buffer.removeFirst(end.upperBound + length)
                    if status == 100 { continue }
                    return Response(status: status, headers: headers, body: body)
                }
            }
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let count = try systemValue("read") { chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) } }
            guard count > 0 else { throw SystemError(call: "read response (connection closed)", errno: ECONNRESET) }
            buffer += chunk[0..<count]
        }
    }
}
