namespace Rbs.JBazel.Sync;

/// <summary>The patterns of one ignore file (or of the user's excludes), relative to a base directory.</summary>
/// <param name="BaseDirectory">'/'-separated path of the directory the patterns are relative to, "" for the top.</param>
/// <param name="Patterns">In file order: the last matching pattern decides.</param>
internal sealed record IgnoreList(string BaseDirectory, IReadOnlyList<IgnorePattern> Patterns)
{
    public static IgnoreList Parse(string baseDirectory, IEnumerable<string> lines) =>
        new(baseDirectory, lines.Select(IgnorePattern.Parse).OfType<IgnorePattern>().ToList());

    /// <summary>Reads an ignore file; a missing or unreadable one holds no patterns.</summary>
    public static IgnoreList? Read(string baseDirectory, string file)
    {
        try
        {
            if (!File.Exists(file))
            {
                return null;
            }

            var list = Parse(baseDirectory, File.ReadLines(file));
            return list.Patterns.Count == 0 ? null : list;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// The decision of the last pattern matching <paramref name="path"/>: true = ignored, false =
    /// re-included by a negation, null = no pattern matched (or the path is not below the base).
    /// </summary>
    public bool? Decide(string path, string name, bool isDirectory)
    {
        string relative;
        if (BaseDirectory.Length == 0)
        {
            relative = path;
        }
        else if (path.Length > BaseDirectory.Length
            && path[BaseDirectory.Length] == '/'
            && path.StartsWith(BaseDirectory, StringComparison.Ordinal))
        {
            relative = path[(BaseDirectory.Length + 1)..];
        }
        else
        {
            return null;
        }

        for (var i = Patterns.Count - 1; i >= 0; i--)
        {
            var pattern = Patterns[i];
            if (pattern.Matches(relative, name, isDirectory))
            {
                return !pattern.Negated;
            }
        }

        return null;
    }
}

/// <summary>
/// The ignore lists in effect for one directory during the walk, most specific last: git's precedence
/// (a deeper .gitignore overrides a shallower one, all override .git/info/exclude). Immutable; each
/// directory that has its own .gitignore pushes a new frame.
/// </summary>
internal sealed class IgnoreStack
{
    public static readonly IgnoreStack Empty = new(null, null);

    private readonly IgnoreStack? _parent;
    private readonly IgnoreList? _list;

    private IgnoreStack(IgnoreStack? parent, IgnoreList? list)
    {
        _parent = parent;
        _list = list;
    }

    public IgnoreStack Push(IgnoreList? list) => list is null ? this : new IgnoreStack(this, list);

    public bool IsIgnored(string path, string name, bool isDirectory)
    {
        for (var frame = this; frame is not null; frame = frame._parent)
        {
            if (frame._list?.Decide(path, name, isDirectory) is { } decision)
            {
                return decision;
            }
        }

        return false;
    }
}
