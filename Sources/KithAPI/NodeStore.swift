import KithStore

/// What a node needs of its store beyond `ProfileStore`: sizes for status and metrics, a live
/// backup, and a last sync when it stops. A node serves from `LMDBProfileStore` (KithNode);
/// the in-process API tests run over `MemoryProfileStore`.
public protocol NodeStore: ProfileStore {
    /// Bytes of the data file, and of the map it may grow to.
    var fileBytes: Int { get }
    var mapBytes: Int { get }
    /// Bytes of the pages the tables hold: what a compacting copy would keep of the file, at most.
    func usedBytes() throws -> Int
    /// A compacted, consistent copy into `directory`, taken while the node serves; returns the
    /// copy's size in bytes.
    func backup(into directory: String) throws -> Int
    /// Makes everything committed durable (commits whose sync was deferred).
    func synchronize() throws
}

/// Backups of a store that lives in memory: there is no file to copy.
struct NothingToBackUp: Error, CustomStringConvertible {
    var description: String { "this node's store is in memory: there is nothing to back up" }
}

extension MemoryProfileStore: NodeStore {
    public var fileBytes: Int { 0 }
    public var mapBytes: Int { 0 }
    public func usedBytes() throws -> Int { 0 }
    public func backup(into directory: String) throws -> Int { throw NothingToBackUp() }
}
