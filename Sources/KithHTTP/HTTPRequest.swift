/// A parsed HTTP/1.1 request: the head and the complete (de-chunked) body.
public struct HTTPRequest: Equatable, Sendable {
    public var method: String
    /// The request target as sent (origin form: path and optional query).
    public var target: String
    public var version: HTTPVersion
    /// Header fields in the order received; names as sent (compare case-insensitively).
    public var headers: [HTTPHeader]
    public var body: [UInt8]

    public init(method: String, target: String, version: HTTPVersion, headers: [HTTPHeader], body: [UInt8]) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
    }

    /// The first value of header `name` (case-insensitive), if any.
    public func header(_ name: String) -> String? {
        headers.first { $0.hasName(name) }?.value
    }

    /// Whether the connection stays open after this request (RFC 9112 §9.3).
    public var keepAlive: Bool {
        let tokens = (header("connection") ?? "").lowercased().split(separator: ",").map { $0.trimmingSpaces() }
        if tokens.contains("close") { return false }
        return version == .http11 || tokens.contains("keep-alive")
    }

    /// The path without the query.
    public var path: Substring {
        guard let mark = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target[...] }
        return target[..<mark]
    }

    /// The query string after `?`, if any.
    public var query: Substring? {
        guard let mark = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return nil }
        return target[target.utf8.index(after: mark)...]
    }
}

public struct HTTPHeader: Equatable, Sendable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }

    /// Whether this field is `name`, compared ASCII case-insensitively as field names are
    /// (RFC 9110 §5.1), without allocating: this runs for every header of every request.
    public func hasName(_ name: String) -> Bool {
        Self.equalIgnoringASCIICase(self.name, name)
    }

    public static func equalIgnoringASCIICase(_ left: String, _ right: String) -> Bool {
        guard left.utf8.count == right.utf8.count else { return false }
        return zip(left.utf8, right.utf8).allSatisfy { lowercase($0) == lowercase($1) }
    }

    private static func lowercase(_ byte: UInt8) -> UInt8 {
        (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
    }
}

public enum HTTPVersion: Equatable, Sendable {
    case http10, http11
}

/// Why a request was refused, with the status the server should answer before closing.
public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Error, Sendable {
        case malformedRequestLine = "malformed_request_line"
        case unsupportedVersion = "unsupported_version"
        case requestLineTooLong = "request_line_too_long"
        case malformedHeader = "malformed_header"
        case headersTooLarge = "headers_too_large"
        case invalidContentLength = "invalid_content_length"
        case conflictingFraming = "conflicting_framing"
        case unsupportedTransferEncoding = "unsupported_transfer_encoding"
        case malformedChunk = "malformed_chunk"
        case bodyTooLarge = "body_too_large"
    }

    public var code: Code

    public init(_ code: Code) {
        self.code = code
    }

    /// The response status for this error.
    public var status: Int {
        switch code {
        case .requestLineTooLong: 414
        case .headersTooLarge: 431
        case .bodyTooLarge: 413
        case .unsupportedVersion: 505
        case .unsupportedTransferEncoding: 501
        default: 400
        }
    }

    public var description: String { "\(status) \(code.rawValue)" }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" { s.removeLast() }
        return s
    }
}
