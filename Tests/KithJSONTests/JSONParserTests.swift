import Foundation
import KithCRDT
import KithJSON
import KithTestSupport
import Testing

@Suite("JSON parser")
struct JSONParserTests {
    @Test func parsesASegmentMessage() throws {
        let text = #"{"type":"identify","userId":"u-1","traits":{"email":"a@b.c","age":42,"vip":true,"x":null},"n":[1.5e3,-0,0.25]}"#
        let value = try JSONParser.parse(text)
        #expect(value["type"] == "identify")
        #expect(value["traits"]?["age"] == .number(JSONNumber(literal: "42")!))
        #expect(value["traits"]?["x"] == .null)
        #expect(
            value["n"]
                == .array([.number(JSONNumber(literal: "1.5e3")!), .number(JSONNumber(literal: "-0")!), .number(JSONNumber(literal: "0.25")!)]))
        #expect(value.jsonText == text)
    }

    @Test func decodesEscapesAndSurrogatePairs() throws {
        let value = try JSONParser.parse(#"["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u4e2d\ud83d\ude00", "é中😀"]"#)
        guard case .array(let items) = value else { Issue.record("not an array"); return }
        #expect(items[0] == .string("a\"b\\c/d\u{8}\u{c}\n\r\t"))
        #expect(items[1] == .string("é中😀"))
        #expect(items[2] == .string("é中😀"))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "[01]", "[1.]", "[.5]", "[1e]", "[-]",
        "[+1]", "[NaN]", "[Infinity]", "tru", "nul", "\"abc", "\"a\u{01}b\"", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"",
        "\"\\udc00\"", "\"\\ud800\\u0041\"", "[1] [2]", "{\"a\":1,\"a\":2}", "// c\n1", "[1,2", "'a'",
    ])
    func rejectsMalformedInput(_ text: String) {
        #expect(throws: JSONError.self) { try JSONParser.parse(text) }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONError.self) { try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONError.self) { try JSONParser.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) }  // encoded surrogate
        #expect(throws: JSONError.self) { try JSONParser.parse([0x22, 0x5C, 0x6E, 0xFF, 0x22]) }  // slow path
    }

    @Test func limitsNestingDepth() throws {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(throws: JSONError(.tooDeep, offset: 64)) { try JSONParser.parse(deep) }
        let fine = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        _ = try JSONParser.parse(fine)
        let hostile = String(repeating: "[", count: 100_000)
        #expect(throws: JSONError.self) { try JSONParser.parse(hostile) }
    }

    @Test func writerEscapesEverythingItMust() throws {
        let tricky = "q\"b\\s\n\r\t\u{0}\u{1f}\u{2028}\u{2029}é😀"
        let text = JSONValue.string(tricky).jsonText
        #expect(text == #""q\"b\\s\n\r\t\u0000\u001f\u2028\u2029é😀""#)
        #expect(try JSONParser.parse(text) == .string(tricky))
        let foundation = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) as? String
        #expect(foundation == tricky)
    }

    @Test(
        "strings are escaped the same wherever the byte to escape falls (the writer skips eight plain bytes at a time), into an array and into fixed room"
    )
    func escapingDoesNotDependOnPosition() throws {
        func reference(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{2028}": out += "\\u2028"
                case "\u{2029}": out += "\\u2029"
                case _ where scalar.value < 0x20: out += "\\u00" + String(format: "%02x", scalar.value)
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        }
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{1}", "\u{1f}", "\u{7f}", " ", "\u{2028}", "\u{2029}", "\u{2027}", "\u{202a}", "é", "😀", "€",
        ]
        for length in 0...26 {
            for position in 0...length {
                for special in specials {
                    let text = String(repeating: "a", count: position) + special + String(repeating: "b", count: length - position)
                    var writer = JSONWriter()
                    writer.write(string: text)
                    #expect(writer.string == reference(text), "\(text.debugDescription)")
                    var utf8 = text
                    // Little room at first: the text is written again with more, and must come out whole.
                    let fixed = utf8.withUTF8 { input in [UInt8](jsonCapacity: 4) { $0.appendString(utf8: input, prefix: "p:") } }
                    #expect(fixed == Array(("\"p:" + reference(text).dropFirst()).utf8))
                }
            }
        }
    }

    @Test func randomValuesRoundTripThroughTextAndBinary() throws {
        var random = SplitMix64(seed: 51)
        for _ in 0..<2_000 {
            let value = randomJSON(&random, depth: 0)
            #expect(try JSONParser.parse(value.jsonText) == value)
            #expect(try JSONValue(decoding: value.encoded()) == value)
        }
    }

    @Test func agreesWithFoundationOnNumbers() throws {
        var random = SplitMix64(seed: 52)
        for _ in 0..<1_000 {
            let literal = randomNumberLiteral(&random)
            let ours = try JSONParser.parse("[\(literal)]")
            let theirs = try JSONSerialization.jsonObject(with: Data("[\(literal)]".utf8)) as? [NSNumber]
            guard case .array(let items) = ours, case .number(let n) = items[0], let theirs else {
                Issue.record("\(literal) not parsed")
                continue
            }
            #expect(n.doubleValue == theirs[0].doubleValue, "\(literal)")
        }
    }

    @Test func randomBytesAreRejectedOrParsedNeverCrash() {
        var random = SplitMix64(seed: 53)
        let alphabet = Array(#"{}[]",:0123456789.eE+-\ntrufalsn u"#.utf8) + [0x80, 0xC3, 0xFF, 0x00]
        for _ in 0..<20_000 {
            let bytes = (0..<random.below(40)).map { _ in alphabet[random.below(alphabet.count)] }
            if let value = try? JSONParser.parse(bytes) {
                #expect((try? JSONParser.parse(value.jsonText)) == value)
            }
        }
    }

    @Test func fixedPointIsExact() {
        let cases: [(String, Int, Int64?)] = [
            ("123.45", 6, 123_450_000), ("0.1", 6, 100_000), ("-2.5", 0, -3), ("2.5", 0, 3), ("1.2345678", 6, 1_234_568),
            ("1e2", 2, 10_000), ("5e-10", 2, 0), ("0.005", 2, 1), ("0.004", 2, 0), ("99999999999999999999", 0, nil),
            ("12", 0, 12), ("1.5E+1", 1, 150),
        ]
        for (literal, scale, expected) in cases {
            #expect(JSONNumber(literal: literal)?.fixedPoint(scale: scale) == expected, "\(literal) scale \(scale)")
        }
        var writer = JSONWriter()
        writer.write(fixedPoint: 1_234_500, scale: 6)
        writer.raw(",")
        writer.write(fixedPoint: -50, scale: 6)
        writer.raw(",")
        writer.write(fixedPoint: 7_000_000, scale: 6)
        #expect(writer.string == "1.2345,-0.00005,7")
    }

    /// Fixed-point values are written digit by digit: the same text as the plain decimal
    /// arithmetic on strings that the writer once used.
    @Test func fixedPointIsWrittenAsItsShortestExactDecimal() {
        func reference(_ value: Int64, _ scale: Int) -> String {
            var digits = String(value.magnitude)
            if digits.count <= scale { digits = String(repeating: "0", count: scale - digits.count + 1) + digits }
            let integerPart = (value < 0 ? "-" : "") + digits.dropLast(scale)
            var fraction = String(digits.suffix(scale))
            while fraction.hasSuffix("0") { fraction.removeLast() }
            return fraction.isEmpty ? integerPart : integerPart + "." + fraction
        }
        var random = SplitMix64(seed: 12)
        var values: [Int64] = [0, 1, -1, 10, 1_000_000, -1_000_000, 1_000_001, .max, .min, .max - 1, .min + 1]
        for _ in 0..<3_000 { values.append(Int64(bitPattern: random.next()) >> Int64(random.below(64))) }
        for value in values {
            for scale in [0, 1, 2, 6, 9, 18] {
                var writer = JSONWriter()
                writer.write(fixedPoint: value, scale: scale)
                #expect(writer.string == reference(value, scale), "\(value) scale \(scale)")
            }
        }
    }

    /// Integers are written digit by digit: the same text as Swift's own description.
    @Test func integersAreWrittenAsTheirDecimalLiterals() {
        var random = SplitMix64(seed: 11)
        var values: [Int64] = [0, 1, 9, 10, 99, 100, -1, -10, 1_000_000_007, .max, .min, .max - 1, .min + 1]
        for _ in 0..<1_000 { values.append(Int64(bitPattern: random.next()) >> Int64(random.below(63))) }
        for value in values {
            var writer = JSONWriter()
            writer.write(integer: value)
            #expect(writer.string == String(value))
        }
    }
}

func randomNumberLiteral(_ r: inout SplitMix64) -> String {
    var s = r.chance(30) ? "-" : ""
    s += r.chance(20) ? "0" : String(1 + r.below(99_999))
    if r.chance(50) { s += "." + String(r.below(1_000_000)) }
    if r.chance(20) { s += ["e", "E"][r.below(2)] + ["", "+", "-"][r.below(3)] + String(r.below(30)) }
    return s
}

func randomJSON(_ r: inout SplitMix64, depth: Int) -> JSONValue {
    switch r.below(depth > 3 ? 4 : 6) {
    case 0: return .null
    case 1: return .bool(r.chance(50))
    case 2: return .number(JSONNumber(literal: randomNumberLiteral(&r))!)
    case 3:
        let pool: [String] = ["", "a", "é", "😀", "\"", "\\", "\n", "\u{1}", "text with spaces", "\u{2028}"]
        return .string((0..<r.below(4)).map { _ in pool[r.below(pool.count)] }.joined())
    case 4: return .array((0..<r.below(4)).map { _ in randomJSON(&r, depth: depth + 1) })
    default:
        var members: [JSONObject.Member] = []
        for i in 0..<r.below(4) { members.append(.init("k\(i)\(["", "é", "\""][r.below(3)])", randomJSON(&r, depth: depth + 1))) }
        return .object(JSONObject(members))
    }
}
