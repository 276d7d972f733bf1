using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Rbs.JBazel.Configuration;

namespace Rbs.JBazel.Sync;

/// <summary>
/// File digests from earlier syncs, so a no-op walk hashes nothing. An entry is trusted only while the
/// file's size, mtime (ns) and inode are unchanged, and only if the file was last modified at least
/// <see cref="RacyWindow"/> before it was hashed: a write within the filesystem's timestamp granularity
/// of the hashing could leave the same mtime with different content (git's "racy" index entries).
/// </summary>
/// <remarks>
/// Format (little endian): "RBSDGC01", u32 count, then per entry: u16 path length, UTF-8 path, i64 size,
/// i64 mtime ns, u64 inode, i64 hashed-at ns, 32-byte SHA-256; then SHA-256 of everything before it.
/// Anything that does not parse or check out is ignored and the cache rebuilt.
/// </remarks>
internal sealed class DigestCache
{
    public static readonly TimeSpan RacyWindow = TimeSpan.FromSeconds(1);

    private static readonly byte[] s_magic = "RBSDGC01"u8.ToArray();

    private readonly string? _file;
    private readonly Dictionary<string, Entry> _loaded;
    private readonly Dictionary<string, Entry> _current = new(StringComparer.Ordinal);
    private bool _changed;

    private DigestCache(string? file, Dictionary<string, Entry> loaded)
    {
        _file = file;
        _loaded = loaded;
    }

    /// <summary>Number of entries read from the file.</summary>
    public int LoadedCount => _loaded.Count;

    /// <summary>The cache file for a workspace: <c>$XDG_CACHE_HOME/jbazel/sync/&lt;repo hash&gt;.cache</c> (default <c>~/.cache</c>).</summary>
    public static string? PathFor(string? xdgCacheHome, string? home, string repoHash)
    {
        var cacheHome = xdgCacheHome is { Length: > 0 } && Path.IsPathRooted(xdgCacheHome)
            ? xdgCacheHome
            : home is { Length: > 0 } ? Path.Combine(home, ".cache") : null;
        return cacheHome is null ? null : Path.Combine(cacheHome, "jbazel", "sync", repoHash + ".cache");
    }

    /// <summary>An empty cache that is never written (no cache directory).</summary>
    public static DigestCache InMemory() => new(null, new Dictionary<string, Entry>(StringComparer.Ordinal));

    public static DigestCache Load(string? file)
    {
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        if (file is null)
        {
            return new DigestCache(null, entries);
        }

        try
        {
            if (File.Exists(file))
            {
                Parse(File.ReadAllBytes(file), entries);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or ArgumentException)
        {
            // A corrupt or unreadable cache costs one full hash, nothing more.
            entries.Clear();
        }

        return new DigestCache(file, entries);
    }

    /// <summary>The cached digest of <paramref name="path"/> if it is still valid for <paramref name="stat"/>.</summary>
    public bool TryGet(string path, FileStat stat, out byte[] digest)
    {
        if (_loaded.TryGetValue(path, out var entry)
            && entry.Size == stat.Size
            && entry.MtimeNanoseconds == stat.MtimeNanoseconds
            && entry.Inode == stat.Inode
            && entry.MtimeNanoseconds <= entry.HashedAtNanoseconds - RacyWindow.Ticks * 100)
        {
            _current[path] = entry;
            digest = entry.Digest;
            return true;
        }

        digest = [];
        return false;
    }

    /// <summary>Records a fresh digest; <paramref name="hashedAtNanoseconds"/> is when reading started.</summary>
    public void Put(string path, FileStat stat, long hashedAtNanoseconds, byte[] digest)
    {
        _current[path] = new Entry(stat.Size, stat.MtimeNanoseconds, stat.Inode, hashedAtNanoseconds, digest);
        _changed = true;
    }

    /// <summary>
    /// Writes the entries used or added by this walk (temp file + rename), only if they differ from what
    /// was loaded. Failing to write a cache never fails a sync.
    /// </summary>
    public bool Save()
    {
        if (_file is null || (!_changed && _current.Count == _loaded.Count))
        {
            return false;
        }

        return CacheFiles.TryWriteAtomically(_file, Serialize(_current));
    }

    internal static byte[] Serialize(IReadOnlyDictionary<string, Entry> entries)
    {
        using var buffer = new MemoryStream(entries.Count * 96 + 64);
        buffer.Write(s_magic);
        Span<byte> scratch = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, (uint)entries.Count);
        buffer.Write(scratch[..4]);
        foreach (var (path, entry) in entries)
        {
            var bytes = Encoding.UTF8.GetBytes(path);
            BinaryPrimitives.WriteUInt16LittleEndian(scratch, checked((ushort)bytes.Length));
            buffer.Write(scratch[..2]);
            buffer.Write(bytes);
            WriteInt64(buffer, scratch, entry.Size);
            WriteInt64(buffer, scratch, entry.MtimeNanoseconds);
            WriteInt64(buffer, scratch, (long)entry.Inode);
            WriteInt64(buffer, scratch, entry.HashedAtNanoseconds);
            buffer.Write(entry.Digest);
        }

        buffer.Write(SHA256.HashData(buffer.GetBuffer().AsSpan(0, (int)buffer.Length)));
        return buffer.ToArray();
    }

    private static void WriteInt64(MemoryStream buffer, Span<byte> scratch, long value)
    {
        BinaryPrimitives.WriteInt64LittleEndian(scratch, value);
        buffer.Write(scratch);
    }

    private static void Parse(ReadOnlySpan<byte> data, Dictionary<string, Entry> entries)
    {
        const int HashSize = 32;
        if (data.Length < s_magic.Length + 4 + HashSize
            || !data[..s_magic.Length].SequenceEqual(s_magic)
            || !SHA256.HashData(data[..^HashSize]).AsSpan().SequenceEqual(data[^HashSize..]))
        {
            throw new FormatException("not a digest cache");
        }

        var body = data[..^HashSize];
        var offset = s_magic.Length;
        var count = BinaryPrimitives.ReadUInt32LittleEndian(body[offset..]);
        offset += 4;
        for (var i = 0u; i < count; i++)
        {
            var length = BinaryPrimitives.ReadUInt16LittleEndian(body[offset..]);
            offset += 2;
            var path = Encoding.UTF8.GetString(body.Slice(offset, length));
            offset += length;
            var size = BinaryPrimitives.ReadInt64LittleEndian(body[offset..]);
            var mtime = BinaryPrimitives.ReadInt64LittleEndian(body[(offset + 8)..]);
            var inode = BinaryPrimitives.ReadUInt64LittleEndian(body[(offset + 16)..]);
            var hashedAt = BinaryPrimitives.ReadInt64LittleEndian(body[(offset + 24)..]);
            var digest = body.Slice(offset + 32, HashSize).ToArray();
            offset += 32 + HashSize;
            entries[path] = new Entry(size, mtime, inode, hashedAt, digest);
        }

        if (offset != body.Length)
        {
            throw new FormatException("trailing bytes in the digest cache");
        }
    }

    internal readonly record struct Entry(long Size, long MtimeNanoseconds, ulong Inode, long HashedAtNanoseconds, byte[] Digest);
}
