namespace Rbs.JBazel.Configuration;

/// <summary>
/// jbazel's files under <c>$XDG_CACHE_HOME/jbazel</c> (digest cache, synced-tree record, cached allocation): written
/// whole or not at all, readable by this user only. A cache that cannot be written or deleted is no cache; it never
/// fails a command.
/// </summary>
internal static class CacheFiles
{
    /// <summary>
    /// Writes <paramref name="bytes"/> to a temporary file beside <paramref name="path"/> and renames it over: a
    /// concurrent jbazel reads the old content or the new, never half of one. False when it could not be written.
    /// </summary>
    public static bool TryWriteAtomically(string path, ReadOnlySpan<byte> bytes)
    {
        var temporary = $"{path}.{Environment.ProcessId}.tmp";
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using (var file = OperatingSystem.IsWindows()
                ? new FileStream(temporary, FileMode.Create, FileAccess.Write)
                : new FileStream(temporary, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                file.Write(bytes);
            }

            File.Move(temporary, path, overwrite: true);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary);
            return false;
        }
    }

    /// <summary>Deletes <paramref name="path"/> if it can; one left behind fails its check next time and is forgotten again.</summary>
    public static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Left behind; see the summary.
        }
    }
}
