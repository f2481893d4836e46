import KithStore
import Testing

@Suite("When the data file is compacted")
struct FileCompactionRuleTests {
    @Test("due once the free pages are both the given share of the file and the least bytes")
    func dueAtBothBounds() {
        let rule = FileCompactionRule(freeFraction: 0.25, minimumFreeBytes: 1_000)
        #expect(rule.isDue(fileBytes: 4_000, usedBytes: 3_000))  // a quarter free, 1,000 bytes
        #expect(!rule.isDue(fileBytes: 4_000, usedBytes: 3_001))  // just under a quarter
        #expect(!rule.isDue(fileBytes: 3_996, usedBytes: 2_997))  // a quarter, but 999 bytes
        #expect(rule.isDue(fileBytes: 1 << 30, usedBytes: 1 << 20))
        #expect(!rule.isDue(fileBytes: 1 << 20, usedBytes: 1 << 20))  // nothing free
        #expect(!rule.isDue(fileBytes: 0, usedBytes: 0))
        // Tables larger than the file (sizes read at two moments): nothing free.
        #expect(!FileCompactionRule(freeFraction: 0.1, minimumFreeBytes: 0).isDue(fileBytes: 100, usedBytes: 200))
    }

    @Test("due once the file has grown by the given share past what the last compaction made it")
    func dueAfterGrowth() {
        let rule = FileCompactionRule(freeFraction: 0.25, growthFraction: 0.2, minimumFreeBytes: 1_000)
        // No page free (the tables grew as inserts split full pages): only growth makes it due.
        #expect(!rule.isDue(fileBytes: 12_000, usedBytes: 12_000))
        #expect(rule.isDue(fileBytes: 12_000, usedBytes: 12_000, compactedBytes: 10_000))
        #expect(!rule.isDue(fileBytes: 11_999, usedBytes: 11_999, compactedBytes: 10_000))
        // A fifth, but fewer bytes than the least worth a copy.
        #expect(!rule.isDue(fileBytes: 4_800, usedBytes: 4_800, compactedBytes: 4_000))
        // A file smaller than the compaction made it (rows dropped since): not due by growth.
        #expect(!rule.isDue(fileBytes: 8_000, usedBytes: 8_000, compactedBytes: 10_000))
    }

    @Test("the defaults: a quarter of the file free, or a fifth's growth past the last compaction, and 64 MiB")
    func defaults() {
        let rule = FileCompactionRule()
        #expect(rule.isDue(fileBytes: 256 << 20, usedBytes: 192 << 20))
        #expect(!rule.isDue(fileBytes: 255 << 20, usedBytes: 192 << 20))
        #expect(!rule.isDue(fileBytes: 200 << 20, usedBytes: 150 << 20))  // a quarter, under 64 MiB
        #expect(rule.isDue(fileBytes: 480 << 20, usedBytes: 480 << 20, compactedBytes: 400 << 20))
        #expect(!rule.isDue(fileBytes: 479 << 20, usedBytes: 479 << 20, compactedBytes: 400 << 20))
        #expect(!rule.isDue(fileBytes: 300 << 20, usedBytes: 300 << 20, compactedBytes: 250 << 20))  // a fifth, under 64 MiB
    }
}
