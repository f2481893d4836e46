import Foundation
import KithJSON

/// Structured logs: one JSON object a line on standard error. Callers pass only ids, routes,
/// counts and error codes: never trait values, emails, identifiers or request bodies.
public struct Log: Sendable {
    public enum Level: String, Sendable {
        case debug, info, warning, error
        /// As a minimum: nothing is written (tests whose refusals are expected).
        case off
    }

    public var minimum: Level

    public init(minimum: Level = .info) {
        self.minimum = minimum
    }

    public func callAsFunction(_ level: Level, _ message: String, _ metadata: [(String, JSONValue)] = []) {
        guard Self.rank(level) >= Self.rank(minimum) else { return }
        var writer = JSONWriter(capacity: 128)
        writer.writeObject { object in
            object.member("time", string: ISO8601DateFormatter().string(from: Date()))
            object.member("level", string: level.rawValue)
            object.member("message", string: message)
            for (key, value) in metadata { object.member(key, value) }
        }
        writer.raw(byte: UInt8(ascii: "\n"))
        FileHandle.standardError.write(Data(writer.bytes))
    }

    private static func rank(_ level: Level) -> Int {
        switch level {
        case .debug: 0
        case .info: 1
        case .warning: 2
        case .error: 3
        case .off: 4
        }
    }
}
