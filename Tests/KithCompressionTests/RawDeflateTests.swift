import KithCRDT
import KithCompression
import KithTestSupport
import Testing

@Suite("raw deflate with a dictionary")
struct RawDeflateTests {
    static let dictionary = Array(#""revenue":"currency":"USD"Order CompletedProduct Viewed"#.utf8)

    @Test func roundTripsAndTheDictionaryHelpsShortRecords() throws {
        var random = SplitMix64(seed: 5)
        for _ in 0..<300 {
            let size = random.below(3_000)
            let data = (0..<size).map { _ in random.chance(60) ? UInt8(ascii: "e") : UInt8(truncatingIfNeeded: random.next()) }
            #expect(
                try RawDeflate.decompress(RawDeflate.compress(data, dictionary: Self.dictionary), dictionary: Self.dictionary, size: size) == data)
        }
        let record = Array(#"Order Completed{"revenue":12.5,"currency":"USD"}"#.utf8)
        #expect(RawDeflate.compress(record, dictionary: Self.dictionary).count < RawDeflate.compress(record, dictionary: [0]).count)
    }

    @Test func refusesTheWrongSizeAndDamage() throws {
        let data = Array(String(repeating: "Product Viewed ", count: 40).utf8)
        let packed = RawDeflate.compress(data, dictionary: Self.dictionary)
        #expect(throws: GzipError(.tooLarge)) { try RawDeflate.decompress(packed, dictionary: Self.dictionary, size: data.count - 1) }
        #expect(throws: GzipError(.corrupt)) { try RawDeflate.decompress(packed, dictionary: Self.dictionary, size: data.count + 1) }
        #expect(throws: GzipError(.truncated)) { try RawDeflate.decompress(Array(packed.dropLast(2)), dictionary: Self.dictionary, size: data.count) }
        #expect(throws: GzipError(.corrupt)) { try RawDeflate.decompress(packed + [0], dictionary: Self.dictionary, size: data.count) }
        #expect(throws: GzipError.self) { try RawDeflate.decompress([0xFF, 0xFF, 0xFF], dictionary: Self.dictionary, size: 10) }
    }
}
