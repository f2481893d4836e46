import Foundation
import KithJSON

/// How the CLI shows a JSON document to a person at a terminal (`--format table`, the default
/// there): one `key  value` row per scalar, nested objects as dotted keys, arrays of scalars
/// joined, arrays of objects as indexed rows; and, by what a key names, sizes in binary units
/// (`…Bytes`), durations (`…Seconds`, and `…Ms` unless it is an offset), and times in the local
/// time zone's ISO form (ISO strings in UTC, and `…At` numbers of milliseconds since 1970).
/// Pure: the time zone is an argument. `--format json` never comes here.
public enum HumanTable {
    public static func rows(_ value: JSONValue, timeZone: TimeZone = .current) -> [(key: String, value: String)] {
        var rows: [(key: String, value: String)] = []
        collect(value, key: "", into: &rows, timeZone: timeZone)
        return rows
    }

    /// The rows, keys padded to one width.
    public static func render(_ value: JSONValue, timeZone: TimeZone = .current) -> String {
        let rows = rows(value, timeZone: timeZone)
        let width = rows.map(\.key.count).max() ?? 0
        return rows.map { $0.key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.value }.joined(separator: "\n")
    }

    private static func collect(_ value: JSONValue, key: String, into rows: inout [(key: String, value: String)], timeZone: TimeZone) {
        switch value {
        case .object(let object):
            if object.members.isEmpty { rows.append((key, "(none)")) }
            for member in object.members {
                collect(member.value, key: key.isEmpty ? member.key : key + "." + member.key, into: &rows, timeZone: timeZone)
            }
        case .array(let items):
            if items.allSatisfy({ !$0.isContainer }) {
                rows.append((key, items.isEmpty ? "(none)" : items.map { scalar($0, key: key, timeZone: timeZone) }.joined(separator: ", ")))
            } else {
                for (index, item) in items.enumerated() { collect(item, key: "\(key)[\(index)]", into: &rows, timeZone: timeZone) }
            }
        default:
            rows.append((key, scalar(value, key: key, timeZone: timeZone)))
        }
    }

    private static func scalar(_ value: JSONValue, key: String, timeZone: TimeZone) -> String {
        let name = key.split(separator: ".").last.map { String($0.split(separator: "[").first ?? $0) } ?? key
        switch value {
        case .string(let text): return localTime(iso: text, timeZone: timeZone) ?? text
        case .number(let number):
            let amount = number.doubleValue
            if name.hasSuffix("Bytes") || name == "bytes" { return bytes(amount) }
            if name.hasSuffix("Seconds") { return duration(seconds: amount) }
            if name.hasSuffix("Ms") || name.hasSuffix("Millis") {
                return name.lowercased().contains("offset") ? "\(number.literal) ms" : duration(seconds: amount / 1_000)
            }
            if name.hasSuffix("At"), let millis = Int64(number.literal) { return localTime(millis: millis, timeZone: timeZone) }
            return number.literal
        case .bool(let flag): return flag ? "yes" : "no"
        case .null: return "-"
        default: return value.jsonText
        }
    }

    /// `77824` → `76.0 KiB`.
    public static func bytes(_ count: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var amount = count, unit = 0
        while abs(amount) >= 1_024 && unit < units.count - 1 {
            amount /= 1_024
            unit += 1
        }
        return unit == 0 ? "\(Int(amount)) B" : String(format: "%.1f %@", amount, units[unit])
    }

    /// `54` → `54s`, `200` → `3m 20s`, `7_500` → `2h 5m`, `300_000` → `3d 11h`; under a second in ms.
    public static func duration(seconds: Double) -> String {
        if seconds < 1 && seconds > -1 { return "\(Int((seconds * 1_000).rounded())) ms" }
        let total = Int(seconds.rounded())
        let (days, hours, minutes, rest) = (total / 86_400, total % 86_400 / 3_600, total % 3_600 / 60, total % 60)
        if days > 0 { return hours > 0 ? "\(days)d \(hours)h" : "\(days)d" }
        if hours > 0 { return minutes > 0 ? "\(hours)h \(minutes)m" : "\(hours)h" }
        if minutes > 0 { return rest > 0 ? "\(minutes)m \(rest)s" : "\(minutes)m" }
        return "\(rest)s"
    }

    public static func localTime(millis: Int64, timeZone: TimeZone) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = timeZone
        return formatter.string(from: Date(timeIntervalSince1970: Double(millis) / 1_000))
    }

    /// An ISO 8601 time in UTC (`…Z`, with or without fractions) in the local zone; nil for any
    /// other text.
    static func localTime(iso text: String, timeZone: TimeZone) -> String? {
        guard text.count >= 20, text.hasSuffix("Z"), text.dropFirst(10).first == "T" else { return nil }
        let parser = ISO8601DateFormatter()
        parser.formatOptions = text.contains(".") ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
        guard let date = parser.date(from: text) else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = timeZone
        return formatter.string(from: date)
    }
}

extension JSONValue {
    fileprivate var isContainer: Bool {
        switch self {
        case .object, .array: true
        default: false
        }
    }
}
