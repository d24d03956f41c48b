"""Deterministic demo catalog (IDR prices, invented brands) for `make run` and for listing/search tests."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CATEGORIES", "MAX_COUNT", "DemoProduct", "generate"]


@dataclass(frozen=True)
class DemoProduct:
    sku: str
    name: str
    description: str
    category: str
    price: int
    sales: int
    on_hand: int
    created_offset_seconds: int


# Per category: SKU prefix, brands, nouns ("Noun:min-max price in thousands of IDR:adjectives"),
# material clauses, feature phrases, use phrases, name suffixes, and whether names carry a model code.
# Each noun's first adjective is used for the category's first product, so "Wireless Mouse" always exists.
_SPEC: dict[str, tuple[str, str, str, str, str, str, str, bool]] = {
    "electronic": (
        "EL", "Voltrix|Nexora|Zentiq|Orbitel|Sinarcom|Kavira",
        "Mouse:45-350:Wireless,Ergonomic,Silent,Gaming,Vertical;Keyboard:120-1500:Mechanical,Wireless,Compact,Backlit;Headphones:150-3000:Wireless,Noise Cancelling,Over Ear,Studio;Power Bank:99-650:Slim,Fast Charging,Magnetic,Compact;Charger:35-400:Fast,Dual Port,GaN,Travel;Speaker:150-2500:Portable,Waterproof,Bluetooth,Smart;Webcam:200-1500:HD,Full HD,Streaming,Autofocus;Smartwatch:300-4000:Fitness,AMOLED,Sport,Slim;Laptop:4000-25000:Thin,Gaming,Business,Student;Earbuds:150-2500:True Wireless,Sport,Noise Cancelling;USB C Cable:15-120:Braided,Fast Charging,Flat;Monitor:1200-8000:Curved,IPS,Ultrawide,Gaming;Tablet:1500-12000:Kids,Student,Drawing;Router:250-2000:Dual Band,Mesh,WiFi 6",
        "made from recycled ABS plastic|built with a brushed aluminium shell|finished in soft touch matte plastic|wrapped in durable braided nylon|housed in a tough polycarbonate body",
        "Bluetooth 5 connectivity|fast USB C charging|a long battery life|plug and play setup|an official 12 month warranty|stable low latency wireless performance",
        "office work and online meetings|gaming and streaming|students and remote workers|travel and daily commuting|a clean home desk setup",
        "Black|White|Graphite|Silver|Midnight Blue", True),
    "fashion": (
        "FA", "Batari|Kenanga Wear|Lunaro|Rimbun|Selaras|Tiarra",
        "Tee:49-250:Cotton,Oversized,Graphic,Basic;Polo Shirt:89-350:Slim Fit,Classic,Pique;Batik Shirt:150-900:Long Sleeve,Short Sleeve,Modern,Parang;Jeans:150-800:Slim Fit,Straight,Stretch,Loose;Hoodie:150-600:Zip,Oversized,Fleece;Sneakers:250-2000:Canvas,Running,Low Top,Chunky;Sandals:49-400:Slide,Strap,Comfort;Dress:120-900:Midi,Maxi,Floral,Wrap;Jacket:200-1500:Bomber,Denim,Windbreaker,Waterproof;Backpack:150-1200:Laptop,Canvas,Travel,Mini;Cap:35-200:Baseball,Trucker,Snapback;Hijab:35-250:Voal,Pashmina,Instant,Jersey;Belt:50-350:Leather,Canvas,Reversible;Socks:15-90:Ankle,Cotton,Sport",
        "made from breathable combed cotton|cut from premium stretch denim|sewn from soft polyester fleece|crafted from genuine cow leather|made from lightweight quick dry nylon|woven from cool viscose rayon",
        "reinforced double stitching|a relaxed modern fit|colours that stay bright after washing|sizes from S to XXL|a lightweight breathable feel",
        "daily casual wear|campus and office days|weekend trips|hot and humid tropical weather|batik Fridays at work",
        "Black|White|Navy|Olive|Maroon|Beige|Grey|Dusty Pink|Mustard|Sage Green", False),
    "home": (
        "HO", "Rumahku|Dapura|Griyana|Nestoria|Sentosa Living|Pawon",
        "Frying Pan:80-700:Non Stick,Granite,Stainless Steel,Cast Iron;Rice Cooker:180-2000:Digital,Mini,Multi Function;Blender:150-1800:Glass Jar,Portable,High Speed;Pillow:40-400:Memory Foam,Latex,Hotel;Bed Sheet Set:99-900:Cotton,Microfiber,Queen,King;Towel:25-250:Bath,Microfiber,Cotton,Quick Dry;Storage Box:30-300:Stackable,Foldable,Clear;Desk Lamp:80-600:LED,Dimmable,Foldable;Electric Kettle:120-800:Stainless Steel,Glass,Gooseneck;Cutting Board:30-300:Bamboo,Teak Wood,Antibacterial;Knife Set:90-1200:Stainless Steel,Chef,Ceramic;Curtain:60-500:Blackout,Sheer,Linen;Standing Fan:200-1200:Quiet,Remote Control,Tower;Dish Rack:45-350:Two Tier,Stainless Steel,Compact",
        "made from food grade stainless steel|crafted from sustainable bamboo|made from BPA free plastic|made from heat resistant tempered glass|woven from soft cotton|finished with a granite non stick coating",
        "an easy clean surface|a space saving design|a two year service warranty|a dishwasher safe build|low energy consumption",
        "small apartments and boarding rooms|everyday family cooking|a tidy and cozy bedroom|busy kitchens|a minimalist home",
        "White|Grey|Cream|Charcoal|Sage|Terracotta", True),
    "beauty": (
        "BE", "Ayuna|Kirana Glow|Melati|Soleya|Puspita|Dewaya",
        "Facial Wash:25-150:Gentle,Acne Care,Brightening,Low pH;Moisturizer:45-450:Gel,Hydrating,Barrier Repair;Sunscreen:35-250:SPF 50,Tinted,Water Resistant;Serum:60-600:Niacinamide,Vitamin C,Hyaluronic;Lipstick:35-350:Matte,Satin,Long Lasting;Cushion Foundation:90-600:Natural,Matte,Dewy;Shampoo:20-200:Anti Dandruff,Argan,Herbal;Hair Oil:30-250:Candlenut,Argan,Coconut;Body Lotion:25-180:Brightening,Shea Butter,Aloe;Sheet Mask:8-60:Hydrating,Green Tea,Collagen;Perfume:80-1500:Floral,Woody,Oud,Citrus;Makeup Brush Set:50-500:Vegan,Travel,Professional;Micellar Water:25-150:Gentle,Oil Control,Rose;Hand Cream:20-120:Shea Butter,Rose,Unscented",
        "formulated with natural aloe vera|enriched with niacinamide and ceramide|made with cold pressed candlenut oil|infused with green tea extract|made with gentle plant based ingredients",
        "a lightweight non sticky texture|a dermatologically tested formula|BPOM registered safety|a halal certified formula|a travel friendly pump bottle",
        "oily and acne prone skin|daily morning and night routines|sensitive skin in humid weather|a fresh look all day|dry and dull skin",
        "Travel Size|Full Size|Twin Pack|Refill|Gift Set|Mini|Value Size|30 ml|50 ml|100 ml", False),
    "sports": (
        "SP", "Garuda Sport|Lintas|Ventro|Atleta|Gesit|Kuatra",
        "Yoga Mat:80-700:Non Slip,TPE,Cork,Extra Thick;Dumbbell Set:150-2500:Adjustable,Neoprene,Hex;Running Shoes:300-2500:Lightweight,Trail,Cushioned;Jump Rope:25-200:Speed,Weighted,Digital;Badminton Racket:150-2500:Carbon,Lightweight,Head Heavy;Football:80-700:Match,Training,Futsal;Sports Water Bottle:35-350:Insulated,BPA Free,Squeeze;Resistance Band Set:45-350:Latex,Fabric,Loop;Cycling Helmet:200-1800:Aero,Road,MTB;Gym Gloves:40-250:Padded,Half Finger,Breathable;Tennis Racket:300-3500:Graphite,Junior,Pro;Shuttlecock Tube:60-350:Feather,Nylon,Tournament;Gym Bag:100-700:Duffel,Waterproof,Drawstring;Treadmill:3000-15000:Foldable,Motorized,Compact",
        "made from high density TPE foam|built with a lightweight carbon fibre frame|made from sweat resistant neoprene|made from breathable mesh fabric|made from natural latex rubber",
        "an anti slip grip|a sweat wicking finish|a free carry bag|a shock absorbing design|adjustable resistance levels",
        "home workouts|morning runs|badminton and futsal sessions|gym training|outdoor weekend sports",
        "Black|Red|Blue|Neon Green|Orange", True),
    "toys": (
        "TO", "Ceria|Bocahku|Pelangi Toys|Mainanku|Lucuko|Tumbuh",
        "Building Blocks:60-1500:Creative,City,Classic,Jumbo;Jigsaw Puzzle:40-300:1000 Piece,Wooden,Kids;Remote Control Car:150-1500:Off Road,Drift,Stunt;Doll:50-600:Fashion,Baby,Rag;Plush Toy:35-400:Giant,Cuddly,Mini;Board Game:90-700:Family,Strategy,Party;Action Figure:60-900:Poseable,Collector,Hero;Kite:15-150:Traditional,Stunt,Rainbow;Toy Drone:250-2000:Mini,Camera,Foldable;Kitchen Playset:150-900:Wooden,Pretend Play,Deluxe;Speed Cube:25-250:Magnetic,Pyramid,Mirror;Water Gun:25-250:Pump Action,Mini,Backpack;Train Set:150-1500:Wooden,Electric,Classic;Modelling Clay Set:30-200:Creative,Rainbow,Glow",
        "made from non toxic ABS plastic|carved from smooth pine wood|made from soft hypoallergenic plush fabric|made from child safe silicone|printed with water based inks",
        "rounded safety edges|SNI certified safety|bright educational colours|a rechargeable battery|a sturdy storage box",
        "children aged 3 years and up|family game nights|creative learning at home|birthday gifts|outdoor play",
        "Red|Blue|Pink|Yellow|Rainbow", True),
    "books": (
        "BO", "Pustaka Nusa|Aksara|Lentera Press|Gramata|Bintang Ilmu|Cakrawala",
        "Novel:59-250:Bestselling,Romance,Mystery,Historical;Cookbook:79-350:Indonesian,Vegetarian,Baking;Comic:25-150:Manga Style,Graphic,Collected;Dictionary:60-400:English Indonesian,Pocket,Illustrated;Atlas:90-450:World,Indonesia,Children;Picture Book:40-200:Bilingual,Bedtime,Board;Biography:80-300:Inspiring,Business,Historical;Planner:45-250:Undated,Weekly,Academic;Workbook:30-150:Math,English,Science;Coloring Book:20-120:Mindfulness,Kids,Animal;Textbook:75-500:University,Economics,Programming;Journal:40-250:Dotted,Leather,Lined;Poetry Collection:50-200:Modern,Classic,Illustrated;Travel Guide:80-300:Bali,Java,Pocket",
        "printed on acid free paper|bound in a sturdy hardcover|printed on recycled paper|published as a lightweight paperback|illustrated in full colour",
        "over 200 pages|a helpful index and glossary|a ribbon bookmark|illustrations by local artists|a foreword by a noted author",
        "curious readers of all ages|students preparing for exams|quiet weekend reading|classroom and homeschool use|thoughtful gifts",
        "Vol 1|Vol 2|Vol 3|Vol 4|Vol 5|Vol 6|Vol 7|Vol 8|2nd Edition|3rd Edition|Revised Edition|Collector Edition|Pocket Edition", False),
    "grocery": (
        "GR", "Tani Jaya|Sawah Emas|Nusa Rasa|Kopi Lereng|Dapur Ibu|Segara",
        "Rice:60-350:Pandan Wangi,Organic,Brown;Instant Noodles:15-120:Spicy,Chicken,Curry;Coffee Beans:50-400:Arabica,Robusta,Organic;Palm Sugar:15-90:Organic,Granulated,Block;Chili Sauce:10-60:Extra Hot,Sweet,Garlic;Cooking Oil:20-120:Coconut,Palm,Sunflower;Tea:10-150:Jasmine,Green,Black,Organic;Honey:45-400:Raw,Forest,Organic;Crackers:10-80:Shrimp,Cassava,Fish;Rolled Oats:30-150:Organic,Instant,Gluten Free;Peanut Butter:30-120:Crunchy,Smooth,Natural;Coconut Milk:8-45:Organic,Full Cream,Light;Sweet Soy Sauce:10-60:Original,Reduced Sugar,Refill;Dried Fruit Mix:35-200:Tropical,Organic,Unsweetened",
        "made from organic ingredients|made with produce from the Gayo highlands|produced from locally grown crops|made without artificial preservatives|sourced from small farmers in Java",
        "halal certification|a resealable pouch|a rich natural aroma|no added MSG|a long shelf life",
        "everyday home cooking|breakfast and quick snacks|a warm cup in the morning|family meals|healthy meal prep",
        "Single Pack|Twin Pack|Family Pack|Value Pack|Refill Pack|Gift Box|Bundle of 3|Bundle of 6|250 g|500 g|1 kg", False),
    "automotive": (
        "AU", "Rodaku|Jalanan|Motora|Karbu|Melaju|Bengkelpro",
        "Car Vacuum:150-900:Cordless,Handheld,Compact;Tire Inflator:200-1200:Digital,Portable,Cordless;Dash Cam:300-2500:Front Rear,4K,Night Vision;Motor Oil:45-350:Synthetic,Semi Synthetic,Scooter;Motorcycle Helmet:200-3500:Full Face,Half Face,Modular;Phone Holder:35-300:Magnetic,Dashboard,Handlebar;Seat Cover Set:250-2500:Leather,Waterproof,Breathable;Wiper Blade:40-300:Frameless,Silicone,All Season;Car Wax:50-350:Carnauba,Ceramic,Quick Shine;Jump Starter:450-3000:Portable,Lithium,Heavy Duty;Floor Mat Set:150-1500:Rubber,All Weather,Custom Fit;LED Headlight Bulb:80-700:H4,Super Bright,Canbus;Tool Kit:100-1500:Socket,Emergency,Roadside;Air Freshener:15-120:Vent Clip,Gel,Citrus",
        "made from heat resistant ABS plastic|built with an aluminium alloy body|made from durable natural rubber|crafted from premium synthetic leather|built with weatherproof materials",
        "a universal fit for most cars and motorcycles|easy installation without tools|a 12V car socket plug|a bright LED indicator|a 6 month replacement warranty",
        "daily commuting in city traffic|long road trips|motorcycle riders|keeping your car clean and safe|mudik holiday trips",
        "Black|Grey|Beige|Carbon Look", True),
    "health": (
        "HE", "Sehatku|Jamu Sari|Medika|Vitara|Bugar|Sentosa Care",
        "Vitamin C:25-200:1000 mg,Effervescent,Chewable;Multivitamin:50-450:Daily,Kids,Senior;Digital Thermometer:30-250:Infrared,Fast Read,Flexible Tip;Blood Pressure Monitor:250-1500:Upper Arm,Wrist,Talking;Face Masks:20-120:3 Ply,KN95,Kids;Hand Sanitizer:10-80:Gel,Spray,Aloe Vera;First Aid Kit:50-400:Travel,Home,Car;Fish Oil:60-400:Omega 3,High Strength,Odorless;Herbal Drink:15-120:Ginger,Turmeric,Temulawak;Massage Gun:300-2500:Mini,Deep Tissue,Quiet;Pulse Oximeter:100-600:Fingertip,OLED,Pediatric;Protein Powder:150-1200:Whey,Plant Based,Chocolate;Knee Support:40-300:Compression,Hinged,Sport;Heating Pad:90-500:Electric,Microwavable,Neck",
        "made with natural ginger and turmeric extract|made from medical grade silicone|made from soft breathable fabric|built with a hygienic ABS casing|formulated with essential vitamins and minerals",
        "BPOM registration|an accurate digital display|easy daily dosing|a halal certified formula|a compact travel case",
        "keeping the whole family healthy|recovery after exercise|daily immune support|elderly care at home|monitoring health at home",
        "Pack of 10|Pack of 30|Box of 50|Travel Size|Family Size|Twin Pack", True),
}

CATEGORIES: tuple[str, ...] = tuple(_SPEC)

_TEMPLATES = (
    "This {adj} {noun} from {brand} is {mat} and features {feat}. Perfect for {use}.",
    "Designed for {use}, the {brand} {noun} is {mat} and comes with {feat}.",
    "Enjoy {feat} with this {adj} {noun}, {mat}. A reliable choice for {use}.",
)
_EXTRAS = (
    "Ships from Jakarta within 24 hours.",
    "Free shipping to all provinces in Indonesia.",
    "Original product with a quality guarantee.",
    "Limited stock, order today.",
)
# Letters that read like model codes; I and O are skipped because they look like 1 and 0.
_MODEL_LETTERS = "ABCDEFGHKMNPRSTVXZ"
_MIN_PRICE, _MAX_PRICE = 5_000, 25_000_000
_MAX_OFFSET = 365 * 24 * 3600
# SKUs are numbered from 0001 per category; past 9999 they simply grow a digit (EL-10000).
MAX_COUNT = 100_000


def _parse_nouns(spec: str) -> list[tuple[str, int, int, tuple[str, ...]]]:
    nouns = []
    for item in spec.split(";"):
        noun, prices, adjs = item.split(":")
        lo, hi = (int(p) * 1000 for p in prices.split("-"))
        nouns.append((noun, lo, hi, tuple(adjs.split(","))))
    return nouns


def _lower(phrase: str) -> str:
    # Keep acronyms such as "HD", "GaN" or "SPF" intact; only plain capitalised words read better lower-cased.
    return " ".join(w.lower() if w[1:].islower() else w for w in phrase.split())


def _price(rng: random.Random, lo: int, hi: int) -> int:
    # Log-uniform so cheap and expensive ends of a noun's range are equally represented.
    raw = lo * (hi / lo) ** rng.random()
    return min(_MAX_PRICE, max(_MIN_PRICE, round(raw / 500) * 500))


def _sales(rng: random.Random) -> int:
    # Pareto tail: the median item sells a couple of dozen units, a handful sell thousands.
    return min(5000, int((rng.paretovariate(1.3) - 1) * 25))


def _on_hand(rng: random.Random, sales: int) -> int:
    r = rng.random()
    if r < 0.03:
        return 0
    # Best sellers are more likely to be nearly sold out, which makes flash-sale demos interesting.
    if r < (0.25 if sales >= 300 else 0.06):
        return rng.randint(1, 5)
    return int(rng.triangular(6, 500, 60))


def _name(rng: random.Random, brand: str, adj: str, noun: str, suffixes: list[str], model: bool) -> str:
    parts = [brand, adj, noun]
    if model:
        parts.append(f"{rng.choice(_MODEL_LETTERS)}{rng.randint(1, 99) * 10 + rng.choice((0, 0, 5))}")
    if not model or rng.random() < 0.3:
        parts.append(rng.choice(suffixes))
    return " ".join(parts)


def generate(count: int = 2400, seed: int = 1212) -> list[DemoProduct]:
    """Return `count` products spread round-robin over CATEGORIES; same arguments give the same list."""
    if count < 0 or count > MAX_COUNT:
        raise ValueError(f"count must be between 0 and {MAX_COUNT}, got {count}")
    rng = random.Random(seed)
    parsed = {
        cat: (prefix, brands.split("|"), _parse_nouns(nouns), mats.split("|"), feats.split("|"),
              uses.split("|"), suffixes.split("|"), model)
        for cat, (prefix, brands, nouns, mats, feats, uses, suffixes, model) in _SPEC.items()
    }
    # Sampling without replacement keeps creation times distinct, so "newest first" has no ties.
    offsets = rng.sample(range(_MAX_OFFSET + 1), count)
    per_cat = dict.fromkeys(CATEGORIES, 0)
    last_by_noun: dict[tuple[str, str], tuple[int, int]] = {}
    used_names: set[str] = set()
    products = []
    for i in range(count):
        cat = CATEGORIES[i % len(CATEGORIES)]
        prefix, brands, nouns, mats, feats, uses, suffixes, model = parsed[cat]
        n = per_cat[cat]
        per_cat[cat] = n + 1
        # The first product of a category uses its first noun and adjective: a stable anchor for tests.
        noun, lo, hi, adjs = nouns[0] if n == 0 else rng.choice(nouns)
        adj = adjs[0] if n == 0 else rng.choice(adjs)
        brand = rng.choice(brands)
        name = _name(rng, brand, adj, noun, suffixes, model)
        attempt = 0
        while name in used_names or not 10 <= len(name) <= 80:
            attempt += 1
            brand = rng.choice(brands)
            name = _name(rng, brand, rng.choice(adjs), noun, suffixes, model)
            if attempt > 20:
                name = f"{name} Series {attempt}"
        used_names.add(name)
        key = (cat, noun)
        # Deliberate exact ties on price and sales with an earlier sibling, for sku tie-break tests.
        if key in last_by_noun and rng.random() < 0.08:
            price, sales = last_by_noun[key]
        else:
            price, sales = _price(rng, lo, hi), _sales(rng)
        last_by_noun[key] = (price, sales)
        text = rng.choice(_TEMPLATES).format(
            adj=_lower(adj), noun=_lower(noun), brand=brand, mat=rng.choice(mats),
            feat=rng.choice(feats), use=rng.choice(uses))
        if rng.random() < 0.5:
            text = f"{text} {rng.choice(_EXTRAS)}"
        products.append(DemoProduct(
            sku=f"{prefix}-{n + 1:04d}", name=name, description=text, category=cat, price=price,
            sales=sales, on_hand=_on_hand(rng, sales), created_offset_seconds=offsets[i]))
    return products


if __name__ == "__main__":
    items = generate()
    print(f"{len(items)} products")
    for slug in CATEGORIES:
        print(f"  {slug:<11} {sum(p.category == slug for p in items)}")
    # Step one past a multiple of the category count so the samples cover different categories.
    step = len(items) // 5 + 1
    for p in items[::step][:5]:
        print(f"\n{p.sku}  {p.name}  Rp{p.price:,}  sold {p.sales}  stock {p.on_hand}  added {p.created_offset_seconds}s ago")
        print(f"  [{p.category}] {p.description}")
