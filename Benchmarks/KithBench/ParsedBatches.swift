// The workload's messages, parsed into batches for the apply phase: on a thread of their own
// while the store applies the batch before (as a node's event loops parse requests while its
// writer applies), or on the applying thread when no parsing thread was started.
import Foundation
import KithJSON
import KithProfile

final class ParsedBatches: @unchecked Sendable {
    /// Batches parsed ahead of the one being applied, at most. Two keep the applying thread
    /// fed across a slow parse without letting parsing run far ahead in memory.
    private static let depth = 2

    private let bytes: [UInt8]
    private let lines: [Range<Int>]
    private let batchSize: Int
    private let receivedAt: Int64
    private let parser = SegmentMessageParser()

    // Guarded by `condition`.
    private let condition = NSCondition()
    private var ready: [[ProfileDelta]] = []
    private var parsingDone = false
    private var parsingFailure: Error?
    private var stopped = false
    private var thread: Thread?

    /// The next line to parse when batches are parsed on the applying thread (no parsing thread
    /// was started, so only that thread touches it).
    private var nextLine = 0

    init(bytes: [UInt8], lines: [Range<Int>], batchSize: Int, receivedAt: Int64) {
        precondition(batchSize > 0)
        self.bytes = bytes
        self.lines = lines
        self.batchSize = batchSize
        self.receivedAt = receivedAt
    }

    deinit { stop() }

    /// Parses every batch on a new thread, `depth` batches ahead of `next()` at most.
    func startParsing() {
        let thread = Thread { [self] in parseAll() }
        thread.name = "kith-bench parse"
        condition.withLock { self.thread = thread }
        thread.start()
    }

    /// The next batch, in workload order; nil after the last. Rethrows a parse error.
    func next() throws -> [ProfileDelta]? {
        guard condition.withLock({ thread != nil }) else { return try parse(batchAt: &nextLine) }
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !parsingDone { condition.wait() }
        if !ready.isEmpty {
            condition.broadcast()
            return ready.removeFirst()
        }
        if let parsingFailure { throw parsingFailure }
        return nil
    }

    /// Lets the parsing thread end early (when the caller stops taking batches).
    func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
        }
    }

    private func parseAll() {
        var line = 0
        do {
            while let batch = try parse(batchAt: &line) {
                condition.lock()
                while ready.count >= Self.depth && !stopped { condition.wait() }
                let keepGoing = !stopped
                if keepGoing { ready.append(batch) }
                condition.broadcast()
                condition.unlock()
                if !keepGoing { break }
            }
            finishParsing(nil)
        } catch {
            finishParsing(error)
        }
    }

    private func finishParsing(_ failure: Error?) {
        condition.withLock {
            parsingDone = true
            parsingFailure = failure
            condition.broadcast()
        }
    }

    /// Parses up to `batchSize` lines from `line` on, advancing it; nil when none are left.
    private func parse(batchAt line: inout Int) throws -> [ProfileDelta]? {
        guard line < lines.count else { return nil }
        let end = min(line + batchSize, lines.count)
        var batch: [ProfileDelta] = []
        batch.reserveCapacity(end - line)
        try bytes.withUnsafeBufferPointer { buffer in
            for range in lines[line..<end] {
                let json = try JSONParser.parse(UnsafeBufferPointer(rebasing: buffer[range]))
                batch.append(try parser.parse(json, receivedAt: receivedAt))
            }
        }
        line = end
        return batch
    }
}
