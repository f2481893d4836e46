/// A path pattern such as `/v1/profiles/{identifier}/events`: literal segments, and parameters
/// in braces that match one whole segment (still percent-encoded) each.
public struct PathPattern: Sendable, Equatable, CustomStringConvertible {
    enum Segment: Sendable, Equatable {
        case literal([UInt8])
        case parameter(String)
    }

    let segments: [Segment]
    /// The pattern as written: what metrics and logs name the route by, never a path with
    /// identifiers in it.
    public let description: String

    public init(_ pattern: String) {
        precondition(pattern.hasPrefix("/"), "a path pattern starts with /: \(pattern)")
        description = pattern
        segments = pattern.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map { segment in
            guard segment.hasPrefix("{") && segment.hasSuffix("}") else { return .literal(Array(segment.utf8)) }
            return .parameter(String(segment.dropFirst().dropLast()))
        }
    }

    /// Whether `path` (its segments) matches: literals byte for byte, parameters non-empty.
    func matches(_ path: [Substring.UTF8View.SubSequence]) -> Bool {
        guard path.count == segments.count else { return false }
        for (segment, part) in zip(segments, path) {
            switch segment {
            case .literal(let bytes): guard part.elementsEqual(bytes) else { return false }
            case .parameter: guard !part.isEmpty else { return false }
            }
        }
        return true
    }

    /// The value of parameter `name` in a path this pattern matched.
    func parameter(_ name: String, in path: [Substring.UTF8View.SubSequence]) -> Substring? {
        guard let index = segments.firstIndex(of: .parameter(name)) else { return nil }
        return Substring(path[index])
    }
}

/// Every route of an API in one table — method, path pattern, and what the caller attaches (who
/// may call it, what answers it) — so that "no such endpoint" (404) and "not with this method"
/// (405, with the methods that are) are decided in one place, with no sockets or threads.
public struct RouteTable<Value: Sendable>: Sendable {
    public struct Route: Sendable {
        public let method: String
        public let pattern: PathPattern
        public let value: Value

        public init(_ method: String, _ pattern: String, _ value: Value) {
            self.method = method
            self.pattern = PathPattern(pattern)
            self.value = value
        }
    }

    /// The parameters of a matched path, read by name when a handler asks (most never do).
    public struct Parameters: Sendable {
        let pattern: PathPattern
        let segments: [Substring.UTF8View.SubSequence]

        public subscript(name: String) -> Substring? { pattern.parameter(name, in: segments) }
    }

    public enum Match {
        case found(Route, parameters: Parameters)
        /// The path exists under other methods (`allowed`, for the `Allow` header), as `pattern`.
        case methodNotAllowed(allowed: [String], pattern: PathPattern)
        case notFound
    }

    public let routes: [Route]

    public init(_ routes: [Route]) {
        for (index, route) in routes.enumerated() {
            precondition(
                !routes[..<index].contains { $0.method == route.method && $0.pattern == route.pattern },
                "the route \(route.method) \(route.pattern) is listed twice")
        }
        self.routes = routes
    }

    /// The route for `method` and `path`. Literal segments win over parameters: the first
    /// route listed that matches is taken, so list specific patterns before general ones.
    public func match(method: String, path: Substring) -> Match {
        let segments = path.utf8.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var allowed: [String] = []
        var pattern: PathPattern?
        for route in routes {
            guard route.pattern.matches(segments) else { continue }
            if route.method == method { return .found(route, parameters: Parameters(pattern: route.pattern, segments: segments)) }
            if !allowed.contains(route.method) { allowed.append(route.method) }
            pattern = pattern ?? route.pattern
        }
        guard let pattern else { return .notFound }
        return .methodNotAllowed(allowed: allowed, pattern: pattern)
    }
}
