namespace Rbs.JBazel.Sync;

/// <summary>
/// One line of a .gitignore (or an <c>--rbs_sync_exclude</c> pattern), with git's semantics: <c>!</c>
/// negates, a trailing <c>/</c> matches directories only, a <c>/</c> at the start or in the middle anchors
/// the pattern to its file's directory (otherwise it matches a name at any depth), <c>*</c> <c>?</c>
/// <c>[...]</c> never match <c>/</c>, <c>**</c> spans directories (<c>**/x</c>, <c>x/**</c>, <c>a/**/b</c>),
/// <c>\</c> escapes, trailing spaces are dropped unless escaped.
/// </summary>
internal sealed class IgnorePattern
{
    private readonly string _pattern;

    private IgnorePattern(string pattern, bool negated, bool directoryOnly, bool matchesName)
    {
        _pattern = pattern;
        Negated = negated;
        DirectoryOnly = directoryOnly;
        MatchesName = matchesName;
    }

    /// <summary>A <c>!pattern</c>: a match re-includes.</summary>
    public bool Negated { get; }

    /// <summary>Written with a trailing <c>/</c>: matches directories only.</summary>
    public bool DirectoryOnly { get; }

    /// <summary>No <c>/</c> except a trailing one: matched against the entry's name at any depth.</summary>
    public bool MatchesName { get; }

    /// <summary>Parses one line; null for blank lines and comments.</summary>
    public static IgnorePattern? Parse(string line)
    {
        var text = TrimTrailingSpaces(line.TrimEnd('\r'));
        if (text.Length == 0 || text[0] == '#')
        {
            return null;
        }

        var negated = false;
        if (text[0] == '!')
        {
            negated = true;
            text = text[1..];
        }
        else if (text.StartsWith("\\!", StringComparison.Ordinal) || text.StartsWith("\\#", StringComparison.Ordinal))
        {
            text = text[1..];
        }

        var directoryOnly = false;
        if (text.EndsWith('/'))
        {
            directoryOnly = true;
            text = text.TrimEnd('/');
        }

        if (text.Length == 0)
        {
            return null;
        }

        var matchesName = !text.Contains('/', StringComparison.Ordinal);
        if (text[0] == '/')
        {
            text = text[1..];
        }

        return text.Length == 0 ? null : new IgnorePattern(text, negated, directoryOnly, matchesName);
    }

    /// <summary>
    /// Whether the pattern matches <paramref name="relativePath"/> ('/'-separated, relative to the directory
    /// of the file the pattern came from) whose last segment is <paramref name="name"/>.
    /// </summary>
    public bool Matches(string relativePath, string name, bool isDirectory)
    {
        if (DirectoryOnly && !isDirectory)
        {
            return false;
        }

        return MatchesName
            ? Wildmatch.Match(_pattern, name, pathname: false)
            : Wildmatch.Match(_pattern, relativePath, pathname: true);
    }

    public override string ToString() => (Negated ? "!" : "") + _pattern + (DirectoryOnly ? "/" : "");

    private static string TrimTrailingSpaces(string text)
    {
        var end = text.Length;
        while (end > 0 && text[end - 1] == ' ')
        {
            // A space escaped with a backslash stays (git: "foo\ " matches "foo ").
            var backslashes = 0;
            for (var i = end - 2; i >= 0 && text[i] == '\\'; i--)
            {
                backslashes++;
            }

            if (backslashes % 2 == 1)
            {
                break;
            }

            end--;
        }

        return text[..end];
    }
}

/// <summary>git's wildmatch (wildmatch.c), with WM_PATHNAME when <c>pathname</c> is set.</summary>
internal static class Wildmatch
{
    private enum Result
    {
        Match,
        NoMatch,
        AbortAll,
        AbortToStarStar,
    }

    public static bool Match(string pattern, string text, bool pathname) =>
        DoMatch(pattern, 0, text, 0, pathname) == Result.Match;

    private static Result DoMatch(string p, int pi, string t, int ti, bool pathname)
    {
        for (; pi < p.Length; pi++, ti++)
        {
            var pc = p[pi];
            if (ti >= t.Length && pc != '*')
            {
                return Result.AbortAll;
            }

            switch (pc)
            {
                case '\\':
                    // A literal next character; a trailing backslash matches nothing.
                    if (++pi >= p.Length)
                    {
                        return Result.AbortAll;
                    }

                    if (t[ti] != p[pi])
                    {
                        return Result.NoMatch;
                    }

                    continue;
                case '?':
                    if (pathname && t[ti] == '/')
                    {
                        return Result.NoMatch;
                    }

                    continue;
                case '*':
                    {
                        bool matchSlash;
                        if (++pi < p.Length && p[pi] == '*')
                        {
                            var before = pi - 2;
                            while (++pi < p.Length && p[pi] == '*')
                            {
                            }

                            if (!pathname)
                            {
                                matchSlash = true;
                            }
                            else if ((before < 0 || p[before] == '/')
                                && (pi >= p.Length || p[pi] == '/' || (p[pi] == '\\' && pi + 1 < p.Length && p[pi + 1] == '/')))
                            {
                                // "**/" may match no directory at all.
                                if (pi < p.Length && p[pi] == '/' && DoMatch(p, pi + 1, t, ti, pathname) == Result.Match)
                                {
                                    return Result.Match;
                                }

                                matchSlash = true;
                            }
                            else
                            {
                                // "**" not between slashes is an ordinary "*".
                                matchSlash = false;
                            }
                        }
                        else
                        {
                            matchSlash = !pathname;
                        }

                        if (pi >= p.Length)
                        {
                            // A trailing star matches the rest, unless that would cross a '/'.
                            if (!matchSlash && t.IndexOf('/', ti) >= 0)
                            {
                                return Result.AbortToStarStar;
                            }

                            return Result.Match;
                        }

                        if (!matchSlash && p[pi] == '/')
                        {
                            var slash = t.IndexOf('/', ti);
                            if (slash < 0)
                            {
                                return Result.AbortAll;
                            }

                            // Continue at the slash in both: the for loop's increment steps over it.
                            ti = slash;
                            continue;
                        }

                        for (; ti < t.Length; ti++)
                        {
                            var matched = DoMatch(p, pi, t, ti, pathname);
                            if (matched != Result.NoMatch)
                            {
                                if (!matchSlash || matched != Result.AbortToStarStar)
                                {
                                    return matched;
                                }
                            }
                            else if (!matchSlash && t[ti] == '/')
                            {
                                return Result.AbortToStarStar;
                            }
                        }

                        return Result.AbortAll;
                    }

                case '[':
                    {
                        var tc = t[ti];
                        if (++pi >= p.Length)
                        {
                            return Result.AbortAll;
                        }

                        var negated = p[pi] == '!' || p[pi] == '^';
                        if (negated && ++pi >= p.Length)
                        {
                            return Result.AbortAll;
                        }

                        var matched = false;
                        var first = true;
                        while (true)
                        {
                            if (pi >= p.Length)
                            {
                                return Result.AbortAll;
                            }

                            var c = p[pi];
                            if (c == ']' && !first)
                            {
                                break;
                            }

                            first = false;
                            if (c == '\\')
                            {
                                if (++pi >= p.Length)
                                {
                                    return Result.AbortAll;
                                }

                                c = p[pi];
                            }
                            else if (c == '[' && pi + 1 < p.Length && p[pi + 1] == ':')
                            {
                                var close = p.IndexOf(":]", pi + 2, StringComparison.Ordinal);
                                if (close < 0)
                                {
                                    return Result.AbortAll;
                                }

                                matched |= CharClass(p[(pi + 2)..close], tc);
                                pi = close + 2;
                                continue;
                            }

                            if (pi + 2 < p.Length && p[pi + 1] == '-' && p[pi + 2] != ']')
                            {
                                var high = p[pi + 2];
                                pi += 2;
                                if (high == '\\')
                                {
                                    if (++pi >= p.Length)
                                    {
                                        return Result.AbortAll;
                                    }

                                    high = p[pi];
                                }

                                matched |= tc >= c && tc <= high;
                            }
                            else
                            {
                                matched |= tc == c;
                            }

                            pi++;
                        }

                        if (matched == negated || (pathname && tc == '/'))
                        {
                            return Result.NoMatch;
                        }

                        continue;
                    }

                default:
                    if (t[ti] != pc)
                    {
                        return Result.NoMatch;
                    }

                    continue;
            }
        }

        return ti < t.Length ? Result.NoMatch : Result.Match;
    }

    private static bool CharClass(string name, char c) => name switch
    {
        "alnum" => char.IsAsciiLetterOrDigit(c),
        "alpha" => char.IsAsciiLetter(c),
        "digit" => char.IsAsciiDigit(c),
        "lower" => char.IsAsciiLetterLower(c),
        "upper" => char.IsAsciiLetterUpper(c),
        "space" => c is ' ' or '\t' or '\n' or '\r' or '\f' or '\v',
        "xdigit" => char.IsAsciiHexDigit(c),
        "punct" => char.IsAscii(c) && (char.IsPunctuation(c) || char.IsSymbol(c)),
        "blank" => c is ' ' or '\t',
        _ => false,
    };
}
