/// A response to send. `Content-Length` and `Connection` are added by the server.
public struct HTTPResponse: Equatable, Sendable {
    public var status: Int
    public var headers: [HTTPHeader]
    public var body: [UInt8]
    /// A body sent a piece at a time instead of `body` (`HTTPBodyStream`): no `Content-Length`,
    /// and the connection closes when it ends.
    public var stream: HTTPBodyStream?

    public init(status: Int, headers: [HTTPHeader] = [], body: [UInt8] = [], stream: HTTPBodyStream? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
    }

    /// A JSON response.
    public static func json(_ status: Int, _ body: [UInt8]) -> HTTPResponse {
        HTTPResponse(status: status, headers: [HTTPHeader("Content-Type", "application/json")], body: body)
    }

    /// Kith's JSON error body: `{"error":{"code":"…","message":"…"}}` (code and message are
    /// Kith's own words, never echoed input, so they need no escaping beyond quotes and backslashes).
    public static func error(_ status: Int, code: String, message: String) -> HTTPResponse {
        func escaped(_ s: String) -> String {
            s.unicodeScalars.map { $0 == "\"" ? "\\\"" : $0 == "\\" ? "\\\\" : $0.value < 0x20 ? " " : String($0) }.joined()
        }
        return json(status, Array(#"{"error":{"code":"\#(escaped(code))","message":"\#(escaped(message))"}}"#.utf8))
    }

    /// The response on the wire, with `Content-Length` and, when `closing`, `Connection: close`.
    package func serialized(closing: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        serialize(closing: closing, into: &bytes)
        return bytes
    }

    /// The same, appended to `output` (a connection's buffer): every response of a server
    /// passes here, so the head is written piece by piece, with no `String` built for it.
    package func serialize(closing: Bool, into output: inout [UInt8]) {
        output.append(static: "HTTP/1.1 ")
        output.append(decimal: status)
        output.append(UInt8(ascii: " "))
        output.append(static: Self.reason(status))
        output.append(static: "\r\n")
        for header in headers {
            output.append(utf8Of: header.name)
            output.append(static: ": ")
            output.append(utf8Of: header.value)
            output.append(static: "\r\n")
        }
        if stream == nil {
            output.append(static: "Content-Length: ")
            output.append(decimal: body.count)
            output.append(static: "\r\n")
        }
        if closing || stream != nil { output.append(static: "Connection: close\r\n") }
        output.append(static: "\r\n")
        output.append(contentsOf: body)
    }

    package static func reason(_ status: Int) -> StaticString {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }
}

/// Answers one request, now or later, from any thread. Exactly one `respond` per request counts;
/// later calls are ignored.
public struct HTTPResponder: Sendable {
    let deliver: @Sendable (HTTPResponse) -> Void

    /// A responder that hands the response to `deliver` (the server makes its own; tests that
    /// drive a handler in process record what it answers).
    public init(_ deliver: @escaping @Sendable (HTTPResponse) -> Void) { self.deliver = deliver }

    public func respond(_ response: HTTPResponse) { deliver(response) }
}

extension [UInt8] {
    fileprivate mutating func append(static text: StaticString) {
        append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    fileprivate mutating func append(utf8Of text: String) {
        var text = text
        text.withUTF8 { append(contentsOf: $0) }
    }

    /// A non-negative integer's decimal digits.
    fileprivate mutating func append(decimal value: Int) {
        precondition(value >= 0, "a status or length is never negative: \(value)")
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for any Int's 19 digits
        Swift.withUnsafeMutableBytes(of: &digits) { scratch in
            var at = scratch.count
            var rest = value
            repeat {
                at -= 1
                scratch[at] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest > 0
            append(contentsOf: scratch[at...])
        }
    }
}
