import Foundation

#if canImport(Glibc)
    import Glibc
#endif

public struct ConnectError: Error {
    public var errno: Int32
}

/// A blocking test client on loopback, with a receive timeout so a hung server fails the test.
public final class TestClient {
    let descriptor: Int32
    private var received: [UInt8] = []

    public init(port: UInt16, timeoutSeconds: Int = 5) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if result != 0 { throw ConnectError(errno: errno) }
    }

    deinit { close(descriptor) }

    public func send(_ text: String) {
        send(Array(text.utf8))
    }

    public func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    }

    /// Reads one response (head and Content-Length body); nil if the connection closed first.
    public func readResponse() -> (status: Int, headers: [String: String], body: String)? {
        while true {
            if let end = received.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: received[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
                var headers: [String: String] = [:]
                for line in head.dropFirst() {
                    let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                    if parts.count == 2 { headers[parts[0].lowercased()] = parts[1] }
                }
                let length = Int(headers["content-length"] ?? "0") ?? 0
                if received.count >= end.upperBound + length {
                    let body = String(decoding: received[end.upperBound..<end.upperBound + length], as: UTF8.self)
                    received.removeFirst(end.upperBound + length)
                    let status = Int(head[0].split(separator: " ")[1]) ?? 0
                    return (status, headers, body)
                }
            }
            guard readMore() else { return nil }
        }
    }

    /// Reads until the received text contains `marker` (or the server closes, or the receive
    /// timeout passes); returns everything received so far and keeps nothing back. For bodies
    /// without a length, such as an event stream.
    public func readUntil(_ marker: String) -> String {
        while !String(decoding: received, as: UTF8.self).contains(marker), readMore() {}
        defer { received = [] }
        return String(decoding: received, as: UTF8.self)
    }

    /// Closes the connection from the client's side.
    public func shutdownWriting() { shutdown(descriptor, Int32(SHUT_RDWR)) }

    /// Whether the server has closed the connection (reads end of stream).
    public func isClosedByServer() -> Bool { received.isEmpty && !readMore() }

    private func readMore() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return false }
        received += buffer[0..<count]
        return true
    }
}
