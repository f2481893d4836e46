import KithStore
import KithStoreLMDB

/// What a node needs of its store beyond `ProfileStore`: sizes for status and metrics, a live
/// backup, and a last sync when it stops. A node serves from `LMDBProfileStore`; the in-process
/// API tests run one over `MemoryProfileStore`.
protocol NodeStore: ProfileStore {
    /// Bytes of the data file, and of the map it may grow to.
    var fileBytes: Int { get }
    var mapBytes: Int { get }
    /// A compacted, consistent copy into `directory`, taken while the node serves.
    func backup(to directory: String) throws
    /// Makes everything committed durable (commits whose sync was deferred).
    func synchronize() throws
}

extension LMDBProfileStore: NodeStore {
    var fileBytes: Int { environment.fileSize() }
    var mapBytes: Int { environment.info().mapSize }
}

/// Backups of a store that lives in memory: there is no file to copy.
struct NothingToBackUp: Error, CustomStringConvertible {
    var description: String { "this node's store is in memory: there is nothing to back up" }
}

extension MemoryProfileStore: NodeStore {
    var fileBytes: Int { 0 }
    var mapBytes: Int { 0 }
    func backup(to directory: String) throws { throw NothingToBackUp() }
}
