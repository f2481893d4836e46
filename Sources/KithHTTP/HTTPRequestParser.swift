/// An incremental HTTP/1.1 request parser (RFC 9112), written as a state machine over bytes.
///
/// Feed it whatever the socket delivered with `append`; call `next()` until it says `.needMore`.
/// It never hands out a half-parsed request: a request is returned only with its whole body.
/// Pipelined requests queue up in its buffer. Every length is bounded before anything is stored,
/// framing ambiguities that enable request smuggling are refused, and after an error the parser
/// refuses everything (the connection must be closed after sending the error's status).
public struct HTTPRequestParser: Sendable {
    public struct Limits: Sendable {
        public var requestLineBytes = 8 * 1024
        public var headerBytes = 16 * 1024
        public var headerCount = 100
        public var bodyBytes = 512 * 1024
        public var chunkLineBytes = 1_024
        public var trailerBytes = 4 * 1024

        public init() {}
    }

    public enum Step: Equatable, Sendable {
        /// A complete request.
        case request(HTTPRequest)
        /// Waiting for bytes. `expectsContinue`: the head asked for `100-continue` and its body
        /// has not started; the server should send `HTTP/1.1 100 Continue` once.
        case needMore(expectsContinue: Bool)
        /// The input is invalid; answer `error.status` and close.
        case failed(HTTPParseError)
    }

    private enum State: Sendable {
        case requestLine
        case headers(Head)
        case fixedBody(Head, remaining: Int)
        case chunkSize(Head)
        case chunkData(Head, remaining: Int)
        case chunkDataEnd(Head)
        case trailers(Head, bytes: Int)
        case failed(HTTPParseError)
    }

    private struct Head: Sendable {
        var method: String
        var target: String
        var version: HTTPVersion
        var headers: [HTTPHeader] = []
        var headerBytes = 0
        var body: [UInt8] = []
        var expectsContinue = false
    }

    public let limits: Limits
    private var buffer: [UInt8] = []
    private var position = 0
    private var state: State = .requestLine

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Bytes received and not yet consumed by a complete request.
    public var bufferedBytes: Int { buffer.count - position }

    /// Whether the request being read asked for `100-continue` and its body has not started: the
    /// server should send `HTTP/1.1 100 Continue` (once).
    public var awaitingContinue: Bool {
        switch state {
        case .fixedBody(let head, _), .chunkSize(let head): head.expectsContinue && head.body.isEmpty
        default: false
        }
    }

    /// Whether the parser is between requests with nothing buffered (an idle connection).
    public var isIdle: Bool {
        if case .requestLine = state { return bufferedBytes == 0 }
        return false
    }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        if position > 0 && position == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            position = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Every step the buffered bytes allow now: complete requests, ending with the failure if
    /// there is one (never `.needMore`).
    public mutating func drain() -> [Step] {
        var steps: [Step] = []
        while true {
            let step = next()
            switch step {
            case .needMore: return steps
            case .failed: return steps + [step]
            case .request: steps.append(step)
            }
        }
    }

    /// Advances as far as the buffered bytes allow.
    public mutating func next() -> Step {
        while true {
            switch state {
            case .failed(let error):
                return .failed(error)
            case .requestLine:
                guard let line = takeLine(limit: limits.requestLineBytes, error: .requestLineTooLong) else { return waiting(nil) }
                switch line {
                case .failure(let error): return fail(error)
                case .success(let bytes):
                    if bytes.isEmpty { continue }  // RFC 9112 §2.2: ignore empty lines before a request
                    switch Self.parseRequestLine(bytes) {
                    case .failure(let error): return fail(error)
                    case .success(let head): state = .headers(head)
                    }
                }
            case .headers(var head):
                let budget = limits.headerBytes - head.headerBytes
                guard let line = takeLine(limit: budget, error: .headersTooLarge) else { return waiting(nil) }
                switch line {
                case .failure(let error): return fail(error)
                case .success(let bytes) where bytes.isEmpty:
                    switch bodyState(for: head) {
                    case .failure(let error): return fail(error)
                    case .success(let next): state = next
                    }
                case .success(let bytes):
                    head.headerBytes += bytes.count + 2
                    guard head.headers.count < limits.headerCount else { return fail(.headersTooLarge) }
                    guard let header = Self.parseHeader(bytes) else { return fail(.malformedHeader) }
                    head.headers.append(header)
                    state = .headers(head)
                }
            case .fixedBody(var head, let remaining):
                if remaining == 0 { return complete(head) }
                let available = min(remaining, bufferedBytes)
                if available == 0 { return waiting(head) }
                head.body.append(contentsOf: buffer[position..<position + available])
                position += available
                state = .fixedBody(head, remaining: remaining - available)
            case .chunkSize(var head):
                guard let line = takeLine(limit: limits.chunkLineBytes, error: .malformedChunk) else { return waiting(head) }
                guard case .success(let bytes) = line, let size = Self.chunkSize(bytes) else { return fail(.malformedChunk) }
                guard head.body.count + size <= limits.bodyBytes else { return fail(.bodyTooLarge) }
                head.expectsContinue = false
                state = size == 0 ? .trailers(head, bytes: 0) : .chunkData(head, remaining: size)
            case .chunkData(var head, let remaining):
                let available = min(remaining, bufferedBytes)
                if available == 0 { return .needMore(expectsContinue: false) }
                head.body.append(contentsOf: buffer[position..<position + available])
                position += available
                state = remaining == available ? .chunkDataEnd(head) : .chunkData(head, remaining: remaining - available)
            case .chunkDataEnd(let head):
                guard let line = takeLine(limit: 0, error: .malformedChunk) else { return .needMore(expectsContinue: false) }
                guard case .success(let bytes) = line, bytes.isEmpty else { return fail(.malformedChunk) }
                state = .chunkSize(head)
            case .trailers(let head, let used):
                guard let line = takeLine(limit: limits.trailerBytes - used, error: .headersTooLarge) else {
                    return .needMore(expectsContinue: false)
                }
                switch line {
                case .failure(let error): return fail(error)
                case .success(let bytes) where bytes.isEmpty: return complete(head)
                case .success(let bytes):
                    guard Self.parseHeader(bytes) != nil else { return fail(.malformedHeader) }
                    state = .trailers(head, bytes: used + bytes.count + 2)  // trailer fields are not used
                }
            }
        }
    }

    private mutating func fail(_ error: HTTPParseError.Code) -> Step {
        state = .failed(HTTPParseError(error))
        return .failed(HTTPParseError(error))
    }

    private mutating func complete(_ head: Head) -> Step {
        state = .requestLine
        return .request(HTTPRequest(method: head.method, target: head.target, version: head.version, headers: head.headers, body: head.body))
    }

    private func waiting(_ head: Head?) -> Step {
        .needMore(expectsContinue: head.map { $0.expectsContinue && $0.body.isEmpty } ?? false)
    }

    /// The next CRLF-terminated line without its CRLF; nil if not all here yet; an error if it
    /// would exceed `limit` bytes or has a bare CR or LF.
    private mutating func takeLine(limit: Int, error: HTTPParseError.Code) -> Result<ArraySlice<UInt8>, HTTPParseError.Code>? {
        var index = position
        while index < buffer.count {
            let byte = buffer[index]
            if byte == 0x0A { return .failure(.malformedHeader) }  // a bare LF
            if byte == 0x0D {
                guard index + 1 < buffer.count else { return nil }
                guard buffer[index + 1] == 0x0A else { return .failure(.malformedHeader) }
                let line = buffer[position..<index]
                position = index + 2
                return .success(line)
            }
            if index - position >= limit { return .failure(error) }
            index += 1
        }
        return index - position > limit ? .failure(error) : nil
    }

    // MARK: - Grammar

    private static func parseRequestLine(_ bytes: ArraySlice<UInt8>) -> Result<Head, HTTPParseError.Code> {
        let parts = bytes.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte), !parts[1].isEmpty,
            parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else { return .failure(.malformedRequestLine) }
        let version: HTTPVersion
        switch String(decoding: parts[2], as: UTF8.self) {
        case "HTTP/1.1": version = .http11
        case "HTTP/1.0": version = .http10
        case let other where other.hasPrefix("HTTP/"): return .failure(.unsupportedVersion)
        default: return .failure(.malformedRequestLine)
        }
        return .success(Head(method: String(decoding: parts[0], as: UTF8.self), target: String(decoding: parts[1], as: UTF8.self), version: version))
    }

    /// `name: value` with a token name, no space before the colon, optional white space around the value.
    /// (Requests and responses share this grammar; the CLI's client parses response headers with it.)
    public static func parseHeader(_ bytes: ArraySlice<UInt8>) -> HTTPHeader? {
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), colon > bytes.startIndex else { return nil }
        let name = bytes[bytes.startIndex..<colon]
        guard name.allSatisfy(isTokenByte) else { return nil }  // also refuses obsolete line folding
        var value = bytes[(colon + 1)...]
        while let first = value.first, first == 0x20 || first == 0x09 { value.removeFirst() }
        while let last = value.last, last == 0x20 || last == 0x09 { value.removeLast() }
        guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else { return nil }
        return HTTPHeader(String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
    }

    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// The body framing the head asks for (RFC 9112 §6.3), refusing ambiguous framing.
    private func bodyState(for head: Head) -> Result<State, HTTPParseError.Code> {
        var head = head
        let lengths = head.headers.filter { $0.hasName("content-length") }.map(\.value)
        let encodings = head.headers.filter { $0.hasName("transfer-encoding") }.map { $0.value.lowercased() }
        head.expectsContinue =
            head.headers.contains {
                $0.hasName("expect") && HTTPHeader.equalIgnoringASCIICase($0.value, "100-continue")
            } && head.version == .http11
        if !encodings.isEmpty {
            guard lengths.isEmpty else { return .failure(.conflictingFraming) }
            let codings = encodings.joined(separator: ",").split(separator: ",").map { $0.trimmingSpaces() }
            guard codings == ["chunked"] else { return .failure(.unsupportedTransferEncoding) }
            guard head.version == .http11 else { return .failure(.conflictingFraming) }
            return .success(.chunkSize(head))
        }
        guard let first = lengths.first else { return .success(.fixedBody(head, remaining: 0)) }
        guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.utf8.count <= 18,
            first.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let length = Int(first)
        else { return .failure(.invalidContentLength) }
        guard length <= limits.bodyBytes else { return .failure(.bodyTooLarge) }
        return .success(.fixedBody(head, remaining: length))
    }

    /// A chunk-size line: hex digits, then optional `;extensions` (ignored).
    private static func chunkSize(_ bytes: ArraySlice<UInt8>) -> Int? {
        let digits = bytes.prefix { $0 != UInt8(ascii: ";") }
        guard !digits.isEmpty, digits.count <= 8 else { return nil }
        var size = 0
        for byte in digits {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A")) + 10
            default: return nil
            }
            size = size * 16 + value
        }
        return size
    }
}
