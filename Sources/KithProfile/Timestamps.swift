import KithJSON

/// ISO 8601 / RFC 3339 times as Segment clients send them, to and from Unix milliseconds.
/// Pure arithmetic (Hinnant's civil-from-days algorithms): no Foundation, no time zone database.
public enum ISO8601 {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM|±HHMM)`. The fraction may have 1 to 9
    /// digits (3 and 6 in practice) and is kept to the millisecond. `t`, `z` and a space
    /// separator are accepted, as some libraries send them. Nil for anything else.
    public static func parseMillis(_ text: String) -> Int64? {
        var text = text
        return text.withUTF8 { parse(Array($0)) }
    }

    private static func parse(_ b: [UInt8]) -> Int64? {
        var i = 0
        func number(_ digits: Int) -> Int64? {
            guard i + digits <= b.count else { return nil }
            var value: Int64 = 0
            for _ in 0..<digits {
                let d = b[i] &- UInt8(ascii: "0")
                guard d < 10 else { return nil }
                value = value * 10 + Int64(d)
                i += 1
            }
            return value
        }
        func expect(_ allowed: UInt8...) -> Bool {
            guard i < b.count, allowed.contains(b[i]) else { return false }
            i += 1
            return true
        }
        guard let year = number(4), expect(UInt8(ascii: "-")), let month = number(2), expect(UInt8(ascii: "-")),
            let day = number(2), expect(UInt8(ascii: "T"), UInt8(ascii: "t"), UInt8(ascii: " ")),
            let hour = number(2), expect(UInt8(ascii: ":")), let minute = number(2), expect(UInt8(ascii: ":")),
            let second = number(2)
        else { return nil }
        guard (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day), hour < 24, minute < 60,
            second < 61
        else { return nil }
        var millis: Int64 = 0
        if i < b.count && b[i] == UInt8(ascii: ".") {
            i += 1
            var digits = 0
            while i < b.count, b[i] &- UInt8(ascii: "0") < 10 {
                if digits < 3 { millis = millis * 10 + Int64(b[i] - UInt8(ascii: "0")) }
                digits += 1
                i += 1
            }
            guard (1...9).contains(digits) else { return nil }
            if digits < 3 { for _ in digits..<3 { millis *= 10 } }
        }
        var offsetMinutes: Int64 = 0
        guard i < b.count else { return nil }
        if expect(UInt8(ascii: "Z"), UInt8(ascii: "z")) {
            offsetMinutes = 0
        } else {
            let sign: Int64 = b[i] == UInt8(ascii: "-") ? -1 : 1
            guard expect(UInt8(ascii: "+"), UInt8(ascii: "-")), let oh = number(2) else { return nil }
            _ = expect(UInt8(ascii: ":"))
            guard let om = number(2), oh < 24, om < 60 else { return nil }
            offsetMinutes = sign * (oh * 60 + om)
        }
        guard i == b.count else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + min(second, 59) - offsetMinutes * 60
        return seconds * 1_000 + millis
    }

    /// `2025-10-09T08:26:40.123Z`.
    public static func format(millis: Int64) -> String {
        var bytes: [UInt8] = []
        append(millis: millis, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the `format(millis:)` text to `output` (in double quotes when `quoted`, as JSON
    /// writes it) in place, without building intermediate strings: a time is written for every
    /// event a profile read renders.
    public static func append<Output: JSONOutput & ~Copyable>(millis: Int64, to output: inout Output, quoted: Bool = false) {
        let (daysPart, msOfDay) = floorDivide(millis, 86_400_000)
        let (year, month, day) = civilFromDays(daysPart)
        let expanded = year < 0 || year > 9_999  // outside RFC 3339's range: an ISO 8601 expanded year
        output.append(upTo: 32) { text in
            var at = 0
            if quoted { put(UInt8(ascii: "\""), text, &at) }
            if expanded {
                put(year < 0 ? UInt8(ascii: "-") : UInt8(ascii: "+"), text, &at)
                let magnitude = abs(year) % 1_000_000
                putTwoDigits(magnitude / 10_000, text, &at)
                putTwoDigits(magnitude / 100 % 100, text, &at)
            } else {
                putTwoDigits(year / 100, text, &at)
            }
            putTwoDigits(abs(year) % 100, text, &at)
            put(UInt8(ascii: "-"), text, &at)
            putTwoDigits(month, text, &at)
            put(UInt8(ascii: "-"), text, &at)
            putTwoDigits(day, text, &at)
            put(UInt8(ascii: "T"), text, &at)
            putTwoDigits(msOfDay / 3_600_000, text, &at)
            put(UInt8(ascii: ":"), text, &at)
            putTwoDigits(msOfDay / 60_000 % 60, text, &at)
            put(UInt8(ascii: ":"), text, &at)
            putTwoDigits(msOfDay / 1_000 % 60, text, &at)
            put(UInt8(ascii: "."), text, &at)
            putTwoDigits(msOfDay % 1_000 / 10, text, &at)
            put(UInt8(ascii: "0") + UInt8(msOfDay % 10), text, &at)
            put(UInt8(ascii: "Z"), text, &at)
            if quoted { put(UInt8(ascii: "\""), text, &at) }
            return at
        }
    }

    @inline(__always)
    private static func put(_ byte: UInt8, _ text: UnsafeMutablePointer<UInt8>, _ at: inout Int) {
        text[at] = byte
        at += 1
    }

    @inline(__always)
    private static func putTwoDigits(_ value: Int64, _ text: UnsafeMutablePointer<UInt8>, _ at: inout Int) {
        text[at] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value / 10)
        text[at + 1] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value % 10)
        at += 2
    }

    private static func floorDivide(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
        let q = a / b, r = a % b
        return r < 0 ? (q - 1, r + b) : (q, r)
    }

    private static func isLeap(_ y: Int64) -> Bool { y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
