import KithCRDT
import KithTestSupport
import Testing

@Suite("Sorted dictionary")
struct SortedDictionaryTests {
    @Test func behavesLikeADictionaryKeptInKeyOrder() {
        var random = SplitMix64(seed: 71)
        for _ in 0..<500 {
            var sorted = SortedDictionary<Int, Int>()
            var reference: [Int: Int] = [:]
            for _ in 0..<random.below(40) {
                let key = random.below(20), value = random.below(100)
                switch random.below(3) {
                case 0:
                    sorted[key] = value
                    reference[key] = value
                case 1:
                    sorted[key] = nil
                    reference[key] = nil
                default:
                    sorted.update(key, default: 0) { $0 += value }
                    reference[key, default: 0] += value
                }
            }
            #expect(sorted.keys == reference.keys.sorted())
            #expect(sorted.values == sorted.keys.map { reference[$0]! })
            for key in 0..<20 { #expect(sorted[key] == reference[key]) }
        }
    }

    @Test func refusesKeysThatAreNotStrictlyAscending() {
        #expect(SortedDictionary(ascending: [1, 2, 3], ["a", "b", "c"]) != nil)
        #expect(SortedDictionary(ascending: [1, 1], ["a", "b"]) == nil)
        #expect(SortedDictionary(ascending: [2, 1], ["a", "b"]) == nil)
    }
}
