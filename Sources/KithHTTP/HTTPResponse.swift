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
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        for header in headers { head += "\(header.name): \(header.value)\r\n" }
        if stream == nil { head += "Content-Length: \(body.count)\r\n" }
        if closing || stream != nil { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + body
    }

    package static func reason(_ status: Int) -> String {
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
