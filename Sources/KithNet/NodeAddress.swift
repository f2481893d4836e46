/// Where a client finds a node, as operators write it (etcdctl and consul take the same):
/// `host:port`, `http://host:port` (a trailing `/` allowed), a host alone (the default port), a
/// bracketed IPv6 literal with or without a port, or an unbracketed one without. Hosts are IP
/// literals or names (resolved when the client connects). Pure: nothing is looked up here.
public struct NodeAddress: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Why an address cannot be used, in a sentence for the operator.
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    public init(parsing text: String, defaultPort: UInt16 = 7080) throws(Invalid) {
        var rest = Substring(text.trimmingSpaces)
        if let separator = rest.indices.first(where: { rest[$0...].hasPrefix("://") }) {
            let scheme = rest[..<separator].lowercased()
            guard scheme == "http" else {
                throw Invalid(description: "\(text): \(scheme):// is not supported; a node speaks plain HTTP (http://host:port)")
            }
            rest = rest[rest.index(separator, offsetBy: 3)...]
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            guard !rest.contains("/") else { throw Invalid(description: "\(text): give the node's address without a path") }
        }
        guard !rest.isEmpty else { throw Invalid(description: "\(text.isEmpty ? "an empty address" : text): no host") }
        var hostPart = rest
        var port = defaultPort
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw Invalid(description: "\(text): an IPv6 address needs its closing ]") }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Invalid(description: "\(text): expected :port after ]") }
                port = try Self.port(after.dropFirst(), in: text)
            }
        } else if rest.filter({ $0 == ":" }).count == 1, let colon = rest.firstIndex(of: ":") {
            hostPart = rest[..<colon]
            port = try Self.port(rest[rest.index(after: colon)...], in: text)
        }
        guard !hostPart.isEmpty, !hostPart.contains(where: { $0 == " " || $0 == "/" || $0 == "@" }) else {
            throw Invalid(description: "\(text): not a host name or IP address")
        }
        self.init(host: String(hostPart), port: port)
    }

    private static func port(_ text: Substring, in address: String) throws(Invalid) -> UInt16 {
        guard let port = UInt16(text), port > 0 else { throw Invalid(description: "\(address): the port must be 1 to 65535") }
        return port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension String {
    fileprivate var trimmingSpaces: Substring {
        var text = Substring(self)
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return text
    }
}
