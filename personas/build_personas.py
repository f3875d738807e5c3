"""Build personas/core.jsonl from the curated attribute lists below.

    python personas/build_personas.py            # rewrites personas/core.jsonl
    python personas/build_personas.py --check    # fails if the file is out of date

The output is deterministic (a fixed seed and no dependence on dict or set order), so the
file can be rebuilt and diffed. Each persona combines an occupation with a concrete work
detail, a place, an age, an expertise level, a current situation, and interests, written in
one of several phrasings. Combinations are drawn so that no occupation, situation or place
repeats often, which keeps descriptions different in substance (the library tests check
word-shingle similarity between every pair).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20241015
COUNT = 1200
OUT = Path(__file__).with_name("core.jsonl")

AGE_BANDS = {"13-17": (13, 17), "18-24": (18, 24), "25-34": (25, 34), "35-44": (35, 44),
             "45-54": (45, 54), "55-64": (55, 64), "65+": (65, 82)}

# (occupation, what the work looks like: a verb phrase in the third person)
WORKERS = [
    ("emergency-room nurse", "works rotating night shifts in a busy trauma unit"),
    ("pediatric nurse", "cares for children recovering from surgery"),
    ("family physician", "runs a small clinic that sees forty patients a day"),
    ("surgeon", "specialises in knee and hip replacements"),
    ("dentist", "runs a two-chair practice in a market town"),
    ("pharmacist", "manages a community pharmacy and advises on drug interactions"),
    ("physiotherapist", "helps athletes recover from ligament injuries"),
    ("midwife", "attends home births across several rural villages"),
    ("paramedic", "answers emergency calls on a highway ambulance crew"),
    ("veterinarian", "treats farm animals and household pets"),
    ("clinical psychologist", "treats teenagers with anxiety"),
    ("speech therapist", "works with children who stutter"),
    ("optometrist", "fits contact lenses and screens for glaucoma"),
    ("radiographer", "operates MRI and CT scanners in a regional hospital"),
    ("medical lab technician", "runs blood tests in a hospital laboratory"),
    ("nutritionist", "writes meal plans for people with diabetes"),
    ("occupational therapist", "adapts homes for people after strokes"),
    ("hospice chaplain", "sits with patients and families at the end of life"),
    ("primary school teacher", "teaches a class of twenty-eight eight-year-olds"),
    ("secondary school chemistry teacher", "runs lab practicals for exam classes"),
    ("high school history teacher", "coaches the debate team after class"),
    ("kindergarten teacher", "plans play-based lessons for four-year-olds"),
    ("special education teacher", "designs lessons for students with dyslexia"),
    ("university lecturer in economics", "teaches introductory macroeconomics to large classes"),
    ("school librarian", "runs reading clubs and teaches research skills"),
    ("language tutor", "teaches English online to adult learners"),
    ("driving instructor", "teaches nervous learners to drive in city traffic"),
    ("school principal", "leads a secondary school of nine hundred students"),
    ("teaching assistant", "supports pupils who are learning the local language"),
    ("adult literacy volunteer", "helps adults learn to read in evening classes"),
    ("music teacher", "gives violin lessons to children"),
    ("math tutor", "prepares students for university entrance exams"),
    ("software engineer", "builds payment systems for an online shop"),
    ("data analyst", "builds sales dashboards for a retail chain"),
    ("data scientist", "forecasts electricity demand for a power utility"),
    ("front-end web developer", "builds accessible websites for charities"),
    ("mobile app developer", "maintains a fitness-tracking app"),
    ("cybersecurity analyst", "investigates phishing attacks at a bank"),
    ("IT support technician", "fixes laptops and printers for a school district"),
    ("network engineer", "keeps a hospital's network running"),
    ("database administrator", "tunes queries for an insurance company"),
    ("game developer", "designs levels for an indie puzzle game"),
    ("UX researcher", "interviews users to improve a banking app"),
    ("machine learning engineer", "trains speech-recognition models"),
    ("embedded systems engineer", "writes firmware for smart thermostats"),
    ("cloud architect", "moves a logistics company's servers to the cloud"),
    ("technical writer", "writes manuals for medical devices"),
    ("QA tester", "tests video games for bugs before release"),
    ("robotics engineer", "programs warehouse robots"),
    ("civil engineer", "designs bridges and culverts for rural roads"),
    ("structural engineer", "checks old buildings for earthquake safety"),
    ("mechanical engineer", "designs cooling systems for data centres"),
    ("electrical engineer", "plans the wiring for new housing estates"),
    ("chemical engineer", "improves the yield of a fertiliser plant"),
    ("aerospace engineer", "tests jet-engine components for fatigue"),
    ("environmental engineer", "designs wastewater treatment for small towns"),
    ("petroleum engineer", "manages offshore drilling operations"),
    ("biomedical engineer", "designs low-cost prosthetic limbs"),
    ("materials scientist", "studies corrosion in steel pipelines"),
    ("architect", "designs energy-efficient schools"),
    ("urban planner", "plans bus routes and bike lanes for a growing city"),
    ("land surveyor", "maps property boundaries with GPS equipment"),
    ("electrician", "rewires old houses"),
    ("plumber", "installs heat pumps and fixes leaking pipes"),
    ("carpenter", "builds custom kitchen cabinets"),
    ("bricklayer", "restores brick walls on historic buildings"),
    ("welder", "welds steel frames for warehouses"),
    ("auto mechanic", "repairs hybrid and electric cars"),
    ("motorcycle mechanic", "rebuilds vintage motorcycle engines"),
    ("HVAC technician", "services air-conditioning in office towers"),
    ("roofer", "installs solar-ready roofs"),
    ("painter and decorator", "restores plaster and paints period homes"),
    ("locksmith", "installs smart locks and opens jammed doors"),
    ("crane operator", "lifts steel beams on high-rise construction sites"),
    ("wind turbine technician", "climbs turbines to service gearboxes"),
    ("solar panel installer", "fits rooftop solar systems on farms"),
    ("aircraft maintenance technician", "inspects regional passenger planes overnight"),
    ("shipyard fitter", "assembles hull sections for ferries"),
    ("factory machine operator", "runs a CNC lathe making car parts"),
    ("textile worker", "operates looms in a cotton mill"),
    ("jewellery maker", "casts silver rings in a home workshop"),
    ("furniture restorer", "repairs antique chairs and tables"),
    ("tailor", "alters suits and wedding dresses"),
    ("shoemaker", "makes made-to-measure leather boots"),
    ("potter", "sells stoneware at craft markets"),
    ("glassblower", "makes lamps and vases in a small studio"),
    ("watch repairer", "services mechanical watches"),
    ("bicycle mechanic", "runs a repair stand at a community bike shop"),
    ("chef", "runs the kitchen of a busy seafood restaurant"),
    ("pastry chef", "makes laminated doughs for a bakery café"),
    ("baker", "starts baking bread at three in the morning"),
    ("butcher", "breaks down whole carcasses for a village shop"),
    ("barista", "roasts small batches of coffee for a café"),
    ("street food vendor", "sells grilled skewers from a cart"),
    ("caterer", "cooks for weddings of up to three hundred guests"),
    ("food scientist", "develops plant-based dairy products"),
    ("brewer", "brews craft beer in a microbrewery"),
    ("winemaker", "manages a family vineyard"),
    ("restaurant manager", "handles staff rotas and supplier orders"),
    ("hotel receptionist", "checks in guests at a seaside hotel"),
    ("tour guide", "leads walking tours through the old town"),
    ("flight attendant", "works long-haul flights"),
    ("airline pilot", "flies short-haul routes on a narrow-body jet"),
    ("air traffic controller", "manages approaches into a busy airport"),
    ("truck driver", "hauls refrigerated freight across the country"),
    ("bus driver", "drives a night route through the city"),
    ("taxi driver", "drives airport runs and knows every shortcut"),
    ("delivery courier", "delivers parcels by cargo bike"),
    ("train conductor", "works on regional commuter trains"),
    ("ship's captain", "commands a container ship on Asian routes"),
    ("fisher", "fishes for crab from a small boat"),
    ("logistics coordinator", "schedules shipments for an e-commerce warehouse"),
    ("warehouse supervisor", "leads a night team of pickers and packers"),
    ("port crane dispatcher", "plans the unloading of container ships"),
    ("farmer", "grows rice and keeps ducks"),
    ("dairy farmer", "milks a herd of sixty cows"),
    ("beekeeper", "keeps forty hives and sells honey"),
    ("market gardener", "grows organic vegetables for a weekly box scheme"),
    ("agronomist", "advises farmers on soil health"),
    ("forester", "plans replanting after wildfires"),
    ("park ranger", "patrols a national park and leads nature walks"),
    ("fisheries biologist", "counts salmon returning to spawn"),
    ("horticulturist", "breeds drought-tolerant plants"),
    ("landscape gardener", "designs rain gardens for city yards"),
    ("viticulture advisor", "helps vineyards manage vine diseases"),
    ("sheep farmer", "raises sheep on hill pastures"),
    ("marine biologist", "tags sharks for a research institute"),
    ("astronomer", "studies variable stars at an observatory"),
    ("geologist", "maps rock layers for a mining company"),
    ("seismologist", "monitors earthquake sensors"),
    ("meteorologist", "forecasts storms for a national weather service"),
    ("climate scientist", "models sea-level rise"),
    ("ecologist", "surveys wetland birds"),
    ("microbiologist", "studies bacteria that break down plastics"),
    ("geneticist", "studies inherited heart conditions"),
    ("neuroscientist", "studies how sleep affects memory"),
    ("chemist", "develops safer battery electrolytes"),
    ("physicist", "works on laser cooling of atoms"),
    ("mathematician", "researches graph theory at a university"),
    ("statistician", "designs surveys for the national statistics office"),
    ("epidemiologist", "tracks outbreaks of seasonal flu"),
    ("archaeologist", "excavates Bronze Age settlements"),
    ("anthropologist", "studies fishing communities"),
    ("historian", "researches the history of trade routes"),
    ("museum curator", "plans exhibitions of textiles"),
    ("archivist", "digitises old newspapers"),
    ("librarian", "runs a public library branch"),
    ("translator", "translates technical manuals between Spanish and German"),
    ("sign language interpreter", "interprets in courts and hospitals"),
    ("journalist", "covers local politics for a regional newspaper"),
    ("photojournalist", "documents environmental stories"),
    ("radio presenter", "hosts a morning talk show"),
    ("podcast producer", "edits interview shows"),
    ("novelist", "writes historical mysteries"),
    ("poet", "runs spoken-word nights"),
    ("screenwriter", "writes episodes for a television drama"),
    ("copywriter", "writes advertising for a travel company"),
    ("editor", "edits non-fiction books for a small publisher"),
    ("graphic designer", "designs packaging for food brands"),
    ("illustrator", "illustrates children's picture books"),
    ("animator", "makes short animated explainer videos"),
    ("photographer", "shoots weddings and family portraits"),
    ("video editor", "cuts documentaries"),
    ("fashion designer", "designs clothes from recycled fabric"),
    ("interior designer", "redesigns small apartments"),
    ("musician", "plays bass in a touring band"),
    ("music producer", "records local bands in a home studio"),
    ("sound engineer", "mixes live concerts"),
    ("actor", "performs in regional theatre"),
    ("dancer", "teaches contemporary dance"),
    ("choir director", "leads a community choir of sixty voices"),
    ("stage manager", "runs backstage operations for a theatre"),
    ("lawyer", "specialises in employment law"),
    ("paralegal", "prepares case files for a legal-aid clinic"),
    ("judge", "presides over a family court"),
    ("police officer", "patrols a coastal town"),
    ("detective", "investigates fraud cases"),
    ("firefighter", "fights wildfires in summer"),
    ("prison officer", "runs education programs for inmates"),
    ("customs officer", "inspects cargo at a border crossing"),
    ("soldier", "serves as a combat medic"),
    ("diplomat", "negotiates fishing agreements"),
    ("city council member", "chairs the housing committee"),
    ("civil servant", "writes transport policy for a ministry"),
    ("social worker", "supports families in child-protection cases"),
    ("community organiser", "runs tenant campaigns"),
    ("charity fundraiser", "plans events for a cancer charity"),
    ("NGO program manager", "runs clean-water projects"),
    ("youth worker", "runs an after-school club for teenagers"),
    ("care home assistant", "looks after residents with dementia"),
    ("childminder", "looks after four toddlers at home"),
    ("accountant", "prepares tax returns for small businesses"),
    ("auditor", "audits the accounts of charities"),
    ("financial advisor", "helps families plan for retirement"),
    ("bank teller", "serves customers at a branch counter"),
    ("insurance claims adjuster", "assesses flood damage to homes"),
    ("actuary", "prices life insurance policies"),
    ("investment analyst", "analyses renewable-energy companies"),
    ("loan officer", "approves loans for small farmers"),
    ("bookkeeper", "keeps the books for local shops"),
    ("economist", "studies housing markets for a central bank"),
    ("payroll specialist", "runs payroll for a hospital"),
    ("small business owner", "runs a stationery shop"),
    ("startup founder", "is building an app for booking tutors"),
    ("marketing manager", "runs social-media campaigns for a sportswear brand"),
    ("sales representative", "sells farm machinery"),
    ("real estate agent", "sells flats in a fast-growing suburb"),
    ("management consultant", "advises hospitals on waiting times"),
    ("human resources manager", "handles hiring for a manufacturing firm"),
    ("project manager", "manages the construction of a hospital wing"),
    ("supply chain analyst", "forecasts demand for spare parts"),
    ("procurement officer", "buys equipment for a university"),
    ("office administrator", "runs the office of a dental clinic"),
    ("receptionist", "greets clients at a law firm"),
    ("call-centre agent", "handles customer complaints for a phone company"),
    ("retail cashier", "works the tills at a large supermarket"),
    ("shop assistant", "works in a bookshop"),
    ("hairdresser", "runs a salon with three chairs"),
    ("barber", "cuts hair in a neighbourhood barbershop"),
    ("beautician", "does skincare treatments"),
    ("personal trainer", "trains clients for their first marathon"),
    ("yoga instructor", "teaches classes for older adults"),
    ("football coach", "coaches an under-twelve team"),
    ("swimming instructor", "teaches toddlers and adults to swim"),
    ("professional cyclist", "races in regional road events"),
    ("sports journalist", "covers the national basketball league"),
    ("referee", "officiates semi-professional football matches"),
    ("cleaner", "cleans offices in the early morning"),
    ("janitor", "looks after a school building"),
    ("security guard", "works nights at a shopping centre"),
    ("gardener", "looks after the grounds of a country estate"),
    ("dog groomer", "runs a mobile grooming van"),
    ("dog trainer", "trains guide dogs"),
    ("zookeeper", "cares for big cats"),
    ("stay-at-home parent", "looks after three young children"),
    ("freelance translator", "subtitles films"),
    ("event planner", "organises conferences"),
    ("wedding planner", "plans destination weddings"),
    ("priest", "leads a small rural parish"),
    ("imam", "teaches Arabic classes at a mosque"),
    ("monk", "lives in a mountain monastery and tends its garden"),
    ("funeral director", "arranges funerals"),
    ("postal worker", "delivers mail on a rural route"),
    ("miner", "works underground in a copper mine"),
    ("oil rig worker", "works two-week shifts offshore"),
    ("mountain guide", "leads climbers on glacier routes"),
    ("ski instructor", "teaches beginners on weekends"),
    ("surf instructor", "runs a surf school"),
    ("lifeguard", "watches a busy public beach"),
    ("pilot boat operator", "guides ships into harbour"),
    ("taxidermist", "prepares specimens for a natural history museum"),
    ("cartographer", "makes maps for hiking guides"),
    ("patent examiner", "reviews patents for new batteries"),
    ("quality inspector", "checks welds on pressure vessels"),
    ("lab manager", "runs a university chemistry lab"),
    ("science communicator", "makes science videos for teenagers"),
    ("grant writer", "writes funding bids for arts groups"),
    ("doula", "supports women through labour"),
    ("chiropractor", "treats back pain"),
    ("audiologist", "fits hearing aids"),
    ("dietitian", "works with hospital patients who need tube feeding"),
    ("ambulance dispatcher", "takes emergency calls"),
]

# Roles for ages 13-17: (role, what they do)
TEENS = [
    ("secondary-school student", "plays clarinet in the school orchestra"),
    ("high-school student", "is on the robotics team"),
    ("middle-school student", "loves building things with modular electronics kits"),
    ("student athlete", "trains with the regional under-18 athletics squad"),
    ("apprentice electrician", "spends two days a week at college and three on site"),
    ("vocational student", "is training to become a chef"),
    ("exchange student", "is spending a year abroad with a host family"),
    ("homeschooled student", "studies at home with a parent and online classes"),
    ("student council member", "organises the school's charity drives"),
    ("weekend shop assistant", "works Saturdays at a hardware store"),
    ("young chess player", "competes in national junior tournaments"),
    ("junior volunteer firefighter", "trains with the village volunteer brigade"),
    ("teen coder", "builds small games and posts them online"),
    ("aspiring filmmaker", "shoots short films with friends"),
    ("boarding-school student", "lives at school during term time"),
    ("student radio host", "presents a weekly show on the school radio station"),
    ("junior lifeguard", "patrols the town pool on summer weekends"),
    ("young farmhand", "helps on the family farm before and after school"),
    ("aspiring nurse", "volunteers on Saturdays at a care home"),
    ("teen babysitter", "looks after the neighbours' children in the evenings"),
    ("young game streamer", "streams strategy games to a small audience"),
    ("school newspaper editor", "edits the monthly student paper"),
    ("junior tennis player", "trains at a club four evenings a week"),
    ("science olympiad competitor", "practises physics problems for the national olympiad"),
    ("young entrepreneur", "sells hand-painted phone cases to classmates"),
]

# Retired roles for ages 65+: (role, what they do now)
RETIRED = [
    ("retired schoolteacher", "tutors neighbourhood children for free"),
    ("retired engineer", "restores old radios"),
    ("retired nurse", "volunteers at a blood-donation centre"),
    ("retired farmer", "still keeps a vegetable plot and a few hens"),
    ("retired police officer", "writes a memoir about thirty years on the force"),
    ("retired accountant", "does the books for a community sports club"),
    ("retired sailor", "builds ship models"),
    ("retired factory worker", "grows prize-winning tomatoes"),
    ("retired professor of chemistry", "gives public talks at the local library"),
    ("retired bus driver", "drives a minibus for a seniors' club"),
    ("retired civil servant", "researches family history"),
    ("retired doctor", "volunteers at a free clinic once a week"),
    ("retired journalist", "runs a local history blog"),
    ("retired shopkeeper", "helps run a community café"),
    ("retired miner", "guides visitors around a mining museum"),
    ("retired architect", "sketches buildings on travels"),
    ("retired pilot", "flies gliders at a local club"),
    ("retired librarian", "runs a book club at a care home"),
    ("retired soldier", "mentors young veterans"),
    ("retired tailor", "teaches sewing at a community centre"),
]

# Occupations that people commonly still practise past 65.
SENIOR_WORKERS = {"farmer", "novelist", "judge", "small business owner", "beekeeper", "potter",
                  "watch repairer", "historian", "priest", "musician", "tailor", "winemaker",
                  "market gardener", "translator", "architect", "poet", "furniture restorer",
                  "shoemaker", "monk", "mathematician", "sheep farmer", "choir director",
                  "taxi driver", "economist", "museum curator", "glassblower"}

# Jobs that need long training or seniority: the youngest believable age.
MIN_AGE = {
    "family physician": 27, "surgeon": 30, "dentist": 25, "pharmacist": 24, "veterinarian": 25,
    "clinical psychologist": 27, "optometrist": 24, "university lecturer in economics": 28,
    "school principal": 35, "judge": 38, "lawyer": 25, "diplomat": 27, "airline pilot": 23,
    "ship's captain": 30, "air traffic controller": 23, "architect": 25, "actuary": 24,
    "geneticist": 27, "neuroscientist": 27, "physicist": 26, "mathematician": 26,
    "epidemiologist": 26, "museum curator": 26, "structural engineer": 24, "economist": 25,
    "management consultant": 23, "cloud architect": 27, "detective": 26, "urban planner": 24,
    "chiropractor": 25, "audiologist": 24, "investment analyst": 23, "project manager": 25,
    "human resources manager": 25, "restaurant manager": 23, "marketing manager": 25,
    "lab manager": 27, "city council member": 25, "NGO program manager": 25, "priest": 26,
    "imam": 25, "astronomer": 26, "historian": 26, "archaeologist": 24, "anthropologist": 26,
    "climate scientist": 26, "seismologist": 26, "patent examiner": 25, "funeral director": 25,
    "warehouse supervisor": 23, "choir director": 25, "chemical engineer": 23,
    "aerospace engineer": 23, "petroleum engineer": 23, "biomedical engineer": 23,
    "materials scientist": 25, "machine learning engineer": 23, "data scientist": 23,
}
BANDS_BY_AGE = [(17, "13-17"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"),
                (64, "55-64"), (200, "65+")]

# (city, country)
PLACES = [
    ("Lagos", "Nigeria"), ("Ibadan", "Nigeria"), ("Nairobi", "Kenya"), ("Mombasa", "Kenya"),
    ("Accra", "Ghana"), ("Kumasi", "Ghana"), ("Addis Ababa", "Ethiopia"), ("Kigali", "Rwanda"),
    ("Kampala", "Uganda"), ("Dar es Salaam", "Tanzania"), ("Lusaka", "Zambia"),
    ("Johannesburg", "South Africa"), ("Cape Town", "South Africa"), ("Durban", "South Africa"),
    ("Casablanca", "Morocco"), ("Marrakesh", "Morocco"), ("Cairo", "Egypt"), ("Alexandria", "Egypt"),
    ("Tunis", "Tunisia"), ("Dakar", "Senegal"), ("Abidjan", "Côte d'Ivoire"), ("Maputo", "Mozambique"),
    ("Windhoek", "Namibia"), ("Gaborone", "Botswana"), ("Harare", "Zimbabwe"),
    ("Mumbai", "India"), ("Pune", "India"), ("Chennai", "India"), ("Kolkata", "India"),
    ("Jaipur", "India"), ("Bengaluru", "India"), ("Kochi", "India"), ("Lahore", "Pakistan"),
    ("Karachi", "Pakistan"), ("Dhaka", "Bangladesh"), ("Chittagong", "Bangladesh"),
    ("Kathmandu", "Nepal"), ("Colombo", "Sri Lanka"), ("Kandy", "Sri Lanka"),
    ("Jakarta", "Indonesia"), ("Surabaya", "Indonesia"), ("Yogyakarta", "Indonesia"),
    ("Manila", "the Philippines"), ("Cebu", "the Philippines"), ("Hanoi", "Vietnam"),
    ("Da Nang", "Vietnam"), ("Ho Chi Minh City", "Vietnam"), ("Bangkok", "Thailand"),
    ("Chiang Mai", "Thailand"), ("Kuala Lumpur", "Malaysia"), ("Penang", "Malaysia"),
    ("Singapore", "Singapore"), ("Phnom Penh", "Cambodia"), ("Yangon", "Myanmar"),
    ("Seoul", "South Korea"), ("Busan", "South Korea"), ("Osaka", "Japan"), ("Sapporo", "Japan"),
    ("Fukuoka", "Japan"), ("Tokyo", "Japan"), ("Taipei", "Taiwan"), ("Kaohsiung", "Taiwan"),
    ("Chengdu", "China"), ("Wuhan", "China"), ("Shenzhen", "China"), ("Harbin", "China"),
    ("Hangzhou", "China"), ("Hong Kong", "China"), ("Ulaanbaatar", "Mongolia"),
    ("Almaty", "Kazakhstan"), ("Tashkent", "Uzbekistan"), ("Tbilisi", "Georgia"),
    ("Yerevan", "Armenia"), ("Baku", "Azerbaijan"), ("Istanbul", "Turkey"), ("Izmir", "Turkey"),
    ("Tehran", "Iran"), ("Isfahan", "Iran"), ("Amman", "Jordan"), ("Beirut", "Lebanon"),
    ("Dubai", "the United Arab Emirates"), ("Riyadh", "Saudi Arabia"), ("Doha", "Qatar"),
    ("Muscat", "Oman"), ("Haifa", "Israel"),
    ("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Seville", "Spain"), ("Valencia", "Spain"),
    ("Bilbao", "Spain"), ("Lyon", "France"), ("Marseille", "France"), ("Lille", "France"),
    ("Bordeaux", "France"), ("Turin", "Italy"), ("Naples", "Italy"), ("Bologna", "Italy"),
    ("Palermo", "Italy"), ("Munich", "Germany"), ("Leipzig", "Germany"), ("Hamburg", "Germany"),
    ("Cologne", "Germany"), ("Rotterdam", "the Netherlands"), ("Utrecht", "the Netherlands"),
    ("Ghent", "Belgium"), ("Zurich", "Switzerland"), ("Vienna", "Austria"), ("Graz", "Austria"),
    ("Kraków", "Poland"), ("Gdańsk", "Poland"), ("Brno", "Czechia"), ("Budapest", "Hungary"),
    ("Cluj-Napoca", "Romania"), ("Sofia", "Bulgaria"), ("Thessaloniki", "Greece"),
    ("Athens", "Greece"), ("Belgrade", "Serbia"), ("Zagreb", "Croatia"), ("Ljubljana", "Slovenia"),
    ("Kyiv", "Ukraine"), ("Lviv", "Ukraine"), ("Vilnius", "Lithuania"), ("Riga", "Latvia"),
    ("Tallinn", "Estonia"), ("Helsinki", "Finland"), ("Tampere", "Finland"),
    ("Gothenburg", "Sweden"), ("Malmö", "Sweden"), ("Bergen", "Norway"), ("Tromsø", "Norway"),
    ("Aarhus", "Denmark"), ("Reykjavík", "Iceland"), ("Cork", "Ireland"), ("Galway", "Ireland"),
    ("Glasgow", "Scotland"), ("Cardiff", "Wales"), ("Manchester", "England"), ("Bristol", "England"),
    ("Leeds", "England"), ("Belfast", "Northern Ireland"),
    ("Toronto", "Canada"), ("Winnipeg", "Canada"), ("Halifax", "Canada"), ("Montreal", "Canada"),
    ("Vancouver", "Canada"), ("Chicago", "the United States"), ("Houston", "the United States"),
    ("Atlanta", "the United States"), ("Denver", "the United States"),
    ("Detroit", "the United States"), ("Seattle", "the United States"),
    ("Albuquerque", "the United States"), ("Des Moines", "the United States"),
    ("Anchorage", "the United States"), ("Honolulu", "the United States"),
    ("Boston", "the United States"), ("Miami", "the United States"),
    ("Mexico City", "Mexico"), ("Guadalajara", "Mexico"), ("Oaxaca", "Mexico"),
    ("Monterrey", "Mexico"), ("Guatemala City", "Guatemala"), ("San José", "Costa Rica"),
    ("Panama City", "Panama"), ("Havana", "Cuba"), ("Kingston", "Jamaica"),
    ("Port of Spain", "Trinidad and Tobago"), ("Santo Domingo", "the Dominican Republic"),
    ("Bogotá", "Colombia"), ("Medellín", "Colombia"), ("Quito", "Ecuador"), ("Lima", "Peru"),
    ("Cusco", "Peru"), ("La Paz", "Bolivia"), ("Santiago", "Chile"), ("Valparaíso", "Chile"),
    ("Buenos Aires", "Argentina"), ("Córdoba", "Argentina"), ("Mendoza", "Argentina"),
    ("Montevideo", "Uruguay"), ("Asunción", "Paraguay"), ("São Paulo", "Brazil"),
    ("Recife", "Brazil"), ("Porto Alegre", "Brazil"), ("Belo Horizonte", "Brazil"),
    ("Manaus", "Brazil"), ("Sydney", "Australia"), ("Perth", "Australia"), ("Hobart", "Australia"),
    ("Darwin", "Australia"), ("Brisbane", "Australia"), ("Auckland", "New Zealand"),
    ("Dunedin", "New Zealand"), ("Suva", "Fiji"), ("Port Moresby", "Papua New Guinea"),
    ("Apia", "Samoa"),
]

# Current situations: third-person verb phrases.
SITUATIONS = [
    "is studying at night for a professional certification",
    "recently moved to a new country and is learning the language",
    "wants to help a teenage child with science homework",
    "is saving to buy a first home",
    "has just been promoted to lead a small team",
    "is training for a half-marathon",
    "started a small online side business selling handmade goods",
    "is caring for an elderly parent",
    "is planning a switch to a career in data analysis",
    "wants to understand the news about the economy better",
    "is writing a first book in spare hours",
    "volunteers as a mentor for first-generation university students",
    "is learning to play the piano as an adult",
    "recently became a parent for the first time",
    "is preparing a talk for a regional conference",
    "is renovating an old house room by room",
    "wants to eat more healthily on a tight budget",
    "is returning to work after a long career break",
    "keeps a detailed journal of everything learned each week",
    "is taking an evening course in philosophy",
    "wants to understand personal investing before retirement",
    "is recovering from a sports injury",
    "runs a neighbourhood reading group",
    "is learning to code through free online courses",
    "has been asked to train new colleagues",
    "is trying to reduce the household's energy bills",
    "is preparing for a job interview abroad",
    "coaches a youth sports team at weekends",
    "is organising a community garden",
    "is curious about how artificial materials are recycled",
    "wants to travel through South America next year",
    "is building a small boat in the garage",
    "is learning about local history for a walking-tour project",
    "is studying part-time for a master's degree",
    "wants to understand the science behind the job better",
    "started learning astronomy with a second-hand telescope",
    "is writing grant applications for a local charity",
    "is trying to get a small podcast off the ground",
    "is learning sign language to talk with a deaf neighbour",
    "has started a vegetable garden on a balcony",
    "wants to explain complex ideas more clearly to customers",
    "is preparing to sit a citizenship test",
    "has started running free workshops at the public library",
    "is helping a friend launch a bakery",
    "recently inherited a family farm",
    "is learning statistics to read medical studies",
    "wants to write better reports at work",
    "is researching the family's migration history",
    "is planning a wedding on a small budget",
    "is taking a first course in economics",
    "wants to get better at mental arithmetic",
    "is learning to repair household electronics",
    "has joined a local climate action group",
    "is teaching a grandchild to cook",
    "has taken up birdwatching and keeps species lists",
    "is considering going back to university",
    "was asked to join the school's parent council",
    "is learning a third language for work",
    "is preparing to run for the local council",
    "wants to understand legal contracts before signing a lease",
    "reads popular science books on every commute",
    "is translating a grandparent's letters",
    "is teaching an evening class for the first time",
    "is writing a guide for newcomers to the neighbourhood",
    "has started investing small amounts every month",
    "wants to understand how vaccines work",
    "is building a website for a local club",
    "is planning to cycle across the country",
    "is learning photography to document local wildlife",
    "has to present budget figures to a board every quarter",
]

TEEN_SITUATIONS = [
    "is preparing for national exams next spring",
    "struggles with algebra and wants to catch up",
    "wants to study medicine at university",
    "is building a science-fair project about water quality",
    "is learning to manage a first bank account",
    "wants to get into computer science",
    "is captain of the school quiz team",
    "is writing a history essay on the Industrial Revolution",
    "just started learning a foreign language",
    "wants to understand climate change for a school debate",
    "is saving up for a first laptop",
    "helps younger siblings with their homework",
    "wants to become an engineer",
    "is nervous about a first summer job",
    "reads everything about space exploration",
    "is learning to cook for the family on weekdays",
    "wants to start a school newspaper",
    "is training for a regional swimming championship",
]

RETIRED_SITUATIONS = [
    "is learning to use a smartphone and video calls",
    "wants to understand modern medicine prescribed by doctors",
    "is writing down family recipes for the grandchildren",
    "travels by train to places never visited before",
    "has taken up painting watercolours",
    "is reading about the history of the region",
    "wants to keep the mind sharp with puzzles and new subjects",
    "is planning the family's finances for the years ahead",
    "attends a university-of-the-third-age course",
    "keeps fit with daily walks and swimming",
    "is learning about gardening without chemicals",
    "wants to understand how the internet works",
]

INTERESTS = [
    "birdwatching", "chess", "jazz", "football", "cricket", "basketball", "hiking", "cycling",
    "swimming", "rock climbing", "yoga", "gardening", "baking bread", "cooking street food",
    "fermenting vegetables", "home brewing", "photography", "film history", "science fiction",
    "crime novels", "poetry", "classical music", "hip-hop", "K-pop", "Afrobeats",
    "folk music", "playing guitar", "drumming", "singing in a choir", "board games",
    "video games", "tabletop role-playing games", "crossword puzzles", "sudoku",
    "astronomy", "amateur radio", "model trains", "woodworking", "knitting", "quilting",
    "embroidery", "pottery", "calligraphy", "origami", "sketching", "oil painting",
    "street art", "architecture", "urban history", "local politics", "philosophy",
    "economics podcasts", "stand-up comedy", "theatre", "opera", "ballet", "salsa dancing",
    "tango", "martial arts", "boxing", "running", "trail running", "sailing", "kayaking",
    "fishing", "camping", "foraging", "mushroom hunting", "beekeeping", "keeping chickens",
    "dogs", "cats", "aquariums", "houseplants", "permaculture", "renewable energy",
    "electric cars", "vintage cars", "motorcycles", "aviation", "space exploration",
    "robotics", "3D printing", "programming", "retro computers", "open-source software",
    "cryptography", "math puzzles", "languages", "travel writing", "genealogy",
    "archaeology", "ancient Rome", "medieval history", "mythology", "world religions",
    "volunteering", "mentoring", "community theatre", "public speaking", "debating",
    "stock markets", "personal finance", "minimalism", "interior design", "fashion",
    "thrifting", "vintage furniture", "tea", "coffee", "wine", "spicy food",
    "vegetarian cooking", "nutrition science", "meditation", "psychology", "neuroscience",
    "documentaries", "anime", "comics", "true crime", "detective shows", "surfing",
    "skiing", "snowboarding", "table tennis", "badminton", "volleyball", "rugby",
    "baseball", "Formula 1", "horse riding", "bird photography", "stargazing", "weather",
    "maps", "geocaching", "urban sketching", "bonsai", "marine life", "wildlife conservation",
    "climate policy", "human rights", "education reform", "public health", "local food markets",
]

EXPERTISE_PHRASES = {
    "novice": ["is new to the job", "is still in the first year of the work",
               "is just starting out"],
    "intermediate": ["has several years of experience", "is settled into the job",
                     "knows the basics of the trade well"],
    "expert": ["is a recognised expert in the field", "has decades of experience",
               "trains others in the trade"],
}

# Phrasings. Fields: a (article), age, occ, place, what, situation, exp, interests.
PHRASINGS = [
    "{A} {age}-year-old {occ} in {place} who {what} and {situation}. Enjoys {interests}.",
    "{A} {occ} from {place}, aged {age}, who {what}, {exp_clause} and {situation}. Spare time goes to {interests}.",
    "Working as {a} {occ} in {place}, this {age}-year-old {what} and {situation}. Outside work: {interests}.",
    "At {age}, this {occ} from {place} {what}, {exp_short}, and {situation}. Interests include {interests}.",
    "{A} {Place}-based {occ} ({age}) who {situation}. At work, {occ_the} {what}. Loves {interests}.",
    "{A} {occ} living in {place}, {age} years old: {what}, {situation}, and is passionate about {interests}.",
]
TEEN_PHRASINGS = [
    "{A} {age}-year-old {occ} in {place} who {what} and {situation}. Enjoys {interests}.",
    "{A} {occ} from {place}, aged {age}, who {what} and {situation}. Free time: {interests}.",
    "At {age}, this {occ} in {place} {what} and {situation}; also into {interests}.",
]
RETIRED_PHRASINGS = [
    "{A} {age}-year-old {occ} in {place} who {what} and {situation}. Enjoys {interests}.",
    "{A} {occ} from {place}, aged {age}, who {what} and {situation}. Spends free time on {interests}.",
    "At {age}, this {occ} from {place} {what} and {situation}; other interests: {interests}.",
]


def article(word: str) -> str:
    """'a' or 'an' by sound, for the words that start the phrases above."""
    if word[:1].isdigit():  # an 8-, 11-, 18- or 80-something-year-old
        return "an" if word.startswith("8") or word in ("11", "18") else "a"
    if word.startswith(("NGO", "HVAC")):
        return "an"
    if word.lower().startswith(("uni", "eu", "ux", "us")):
        return "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def _after_a(phrasing: str, age: int, occ: str, city: str) -> str:
    """The word that follows {A} in a phrasing, to pick its article."""
    rest = phrasing.split("{A} ", 1)[-1]
    return str(age) if rest.startswith("{age}") else city if rest.startswith("{Place}") else occ


def join_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def place_text(city: str, country: str) -> str:
    return city if city == country else f"{city}, {country}"


def build(count: int = COUNT, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[tuple] = set()

    # Cycle through shuffled pools so that every value is used about equally often.
    def cycler(items: list) -> "callable":
        pool: list = []

        def nxt():
            if not pool:
                pool.extend(rng.sample(items, len(items)))
            return pool.pop()
        return nxt

    next_worker, next_teen, next_retired = cycler(WORKERS), cycler(TEENS), cycler(RETIRED)
    next_place, next_sit = cycler(PLACES), cycler(SITUATIONS)
    next_teen_sit, next_ret_sit = cycler(TEEN_SITUATIONS), cycler(RETIRED_SITUATIONS)
    next_phrasing, next_interest = cycler(list(range(len(PHRASINGS)))), cycler(INTERESTS)
    band_weights = {"13-17": 0.08, "18-24": 0.14, "25-34": 0.2, "35-44": 0.19, "45-54": 0.17,
                    "55-64": 0.12, "65+": 0.10}
    bands, weights = list(band_weights), list(band_weights.values())

    while len(out) < count:
        band = rng.choices(bands, weights)[0]
        lo, hi = AGE_BANDS[band]
        age = rng.randint(lo, hi)
        if band == "13-17":
            occ, what = next_teen()
            situation = next_teen_sit()
            expertise = rng.choice(["novice", "novice", "intermediate"])
            phrasing = rng.choice(TEEN_PHRASINGS)
        elif band == "65+" and rng.random() < 0.6:
            occ, what = next_retired()
            situation = next_ret_sit()
            expertise = rng.choice(["intermediate", "expert", "expert"])
            phrasing = rng.choice(RETIRED_PHRASINGS)
        else:
            occ, what = next_worker()
            if band == "65+" and occ not in SENIOR_WORKERS:
                occ, what = rng.choice([w for w in WORKERS if w[0] in SENIOR_WORKERS])
            situation = next_sit()
            if age < MIN_AGE.get(occ, 18):
                age = rng.randint(MIN_AGE[occ], MIN_AGE[occ] + 8)
                band = next(b for top, b in BANDS_BY_AGE if age <= top)
            expertise = {"18-24": rng.choice(["novice", "novice", "intermediate"]),
                         "25-34": rng.choice(["novice", "intermediate", "intermediate", "expert"]),
                         }.get(band, rng.choice(["novice", "intermediate", "expert", "expert"]))
            if expertise == "novice" and band in ("45-54", "55-64", "65+"):
                expertise = "intermediate"
            phrasing = PHRASINGS[next_phrasing()]
        city, country = next_place()
        interests: list[str] = []
        n_interests = rng.randint(2, 4)
        while len(interests) < n_interests:
            i = next_interest()
            if i not in interests:
                interests.append(i)
        # The same occupation in the same situation or the same city reads as a near duplicate.
        keys = {("situation", occ, situation), ("city", occ, city)}
        if keys & seen:
            continue
        seen |= keys
        # Keep the experience phrase believable for the age (no "decades" at 30).
        exp_options = [e for e in EXPERTISE_PHRASES[expertise]
                       if not (age < 45 and "decades" in e) and not (age < 25 and "years" in e)]
        exp_clause = rng.choice(exp_options)
        place = place_text(city, country)
        desc = phrasing.format(
            A=article(_after_a(phrasing, age, occ, city)).capitalize(),
            a=article(occ), age=age, occ=occ, Occ=occ[0].upper() + occ[1:], place=place,
            Place=city, what=what, situation=situation, exp_clause=exp_clause,
            exp_short=exp_clause, interests=join_list(interests[:3]), occ_the="the " + occ.split()[-1],
        )
        out.append({
            "id": f"p{len(out) + 1:04d}",
            "description": desc,
            "occupation": occ,
            "age_band": band,
            "region": country,
            "expertise": expertise,
            "interests": interests,
        })
    return out


def dumps(personas: list[dict]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in personas)


def main(argv: list[str]) -> int:
    text = dumps(build())
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date; run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(text.splitlines())} personas to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
